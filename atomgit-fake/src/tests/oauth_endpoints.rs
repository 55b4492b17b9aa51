//! Tests of the OAuth endpoints.

use super::*;

/// Runs the authorize page and returns the code it redirected with.
async fn authorize(fake: &FakeAtomGit, redirect_uri: &str, state: &str) -> String {
    let mut url = url::Url::parse(&format!("{}/login/oauth/authorize", fake.url())).unwrap();
    url.query_pairs_mut()
        .append_pair("client_id", "49521b236a3e8937")
        .append_pair("state", state)
        .append_pair("redirect_uri", redirect_uri)
        .append_pair("response_type", "code");
    let reply = send(Method::GET, url.as_str(), &[], Bytes::new()).await;
    assert_eq!(reply.status, StatusCode::FOUND);
    let location = url::Url::parse(reply.header(LOCATION)).unwrap();
    let pairs: Vec<(String, String)> = location.query_pairs().into_owned().collect();
    assert_eq!(pairs[0], ("x".to_owned(), "1".to_owned()));
    assert_eq!(pairs[2], ("state".to_owned(), state.to_owned()));
    pairs[1].1.clone()
}

async fn token_json(fake: &FakeAtomGit, body: Value) -> Reply {
    send(
        Method::POST,
        &format!("{}/login/oauth/access_token", fake.url()),
        &[
            ("content-type", "application/json"),
            ("accept", "application/json"),
        ],
        Bytes::from(body.to_string()),
    )
    .await
}

#[tokio::test]
async fn code_exchange_then_rotating_refresh() {
    let fake = start(options()).await;
    let bad = send(
        Method::GET,
        &format!(
            "{}/login/oauth/authorize?client_id=nope&redirect_uri=http://x/",
            fake.url()
        ),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);

    let cb = "http://127.0.0.1:9/cb?x=1";
    let code = authorize(&fake, cb, "s t&ate=%/ü").await;
    let exchange = json!({
        "client_id": "49521b236a3e8937", "client_secret": "fake-client-secret",
        "code": code, "grant_type": "authorization_code", "redirect_uri": cb,
    });
    let wrong_secret =
        json!({ "client_id": "49521b236a3e8937", "client_secret": "x", "code": code });
    assert_eq!(
        token_json(&fake, wrong_secret).await.status,
        StatusCode::UNAUTHORIZED
    );
    let grant = token_json(&fake, exchange.clone()).await;
    assert_eq!(grant.status, StatusCode::OK);
    let grant = grant.json();
    let access = grant["access_token"].as_str().unwrap();
    assert!(access.starts_with("atu_"));
    let now_ms = chrono::Utc::now().timestamp_millis();
    let expires_ms = grant["expires_in"].as_i64().unwrap();
    assert!((expires_ms - now_ms - 8 * 3_600_000).abs() < 60_000);
    let refresh_ms = grant["refresh_token_expires_in"].as_i64().unwrap();
    assert!((refresh_ms - now_ms - 180 * 86_400_000).abs() < 60_000);
    assert_eq!(fake.code_exchanges(), 1);
    let reused = token_json(&fake, exchange).await;
    assert_eq!(reused.status, StatusCode::BAD_REQUEST);
    assert_eq!(reused.json()["error"], "invalid_grant");

    let me = get(&format!("{}/user", fake.url()), access).await.json();
    assert_eq!(me["login"], "alice");
    assert_eq!(
        fake.token_owner(access),
        Some(TokenOwner::User("alice".into()))
    );

    let old = grant["refresh_token"].as_str().unwrap();
    let refresh = |rt: &str| {
        json!({
            "client_id": "49521b236a3e8937", "client_secret": "fake-client-secret",
            "grant_type": "refresh_token", "refresh_token": rt,
        })
    };
    let renewed = token_json(&fake, refresh(old)).await.json();
    let new = renewed["refresh_token"].as_str().unwrap();
    assert!(new.starts_with("refresh_") && new != old);
    assert_ne!(renewed["access_token"], grant["access_token"]);
    assert_eq!(fake.refreshes(), 1);
    let replay = token_json(&fake, refresh(old)).await;
    assert_eq!(replay.status, StatusCode::BAD_REQUEST);
    assert_eq!(replay.json()["error"], "invalid_grant");
    assert_eq!(fake.refused_refreshes(), 1);

    fake.set_token_endpoint_failure(Some(500));
    let failed = token_json(&fake, refresh(new)).await;
    assert_eq!(failed.status, StatusCode::INTERNAL_SERVER_ERROR);
    fake.set_token_endpoint_failure(None);
    fake.revoke_user_grants("alice");
    assert_eq!(
        token_json(&fake, refresh(new)).await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!((fake.refreshes(), fake.refused_refreshes()), (1, 2));
    assert!(fake.api_requests().iter().all(|r| r.path == "/user"));
}

#[tokio::test]
async fn form_encoded_answer_without_json_accept() {
    let fake = start(FakeOptions {
        oauth: FakeOAuth {
            expires_format: ExpiresFormat::RelativeSeconds,
            rotate_refresh_tokens: false,
            ..FakeOAuth::default()
        },
        ..options()
    })
    .await;
    let code = authorize(&fake, "http://localhost:1/?x=1", "st").await;
    let form = |pairs: &[(&str, &str)]| {
        let mut ser = url::form_urlencoded::Serializer::new(String::new());
        ser.extend_pairs(pairs);
        Bytes::from(ser.finish())
    };
    let url = format!("{}/login/oauth/access_token", fake.url());
    let reply = send(
        Method::POST,
        &url,
        &[("content-type", "application/x-www-form-urlencoded")],
        form(&[
            ("client_id", "49521b236a3e8937"),
            ("client_secret", "fake-client-secret"),
            ("code", &code),
        ]),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.header(CONTENT_TYPE),
        "application/x-www-form-urlencoded"
    );
    let fields: std::collections::HashMap<String, String> =
        url::form_urlencoded::parse(&reply.body)
            .into_owned()
            .collect();
    assert!(fields["access_token"].starts_with("atu_"));
    assert_eq!(fields["expires_in"], "28800");
    assert_eq!(
        fields["refresh_token_expires_in"],
        (180 * 86_400).to_string()
    );

    // Without rotation the same refresh token comes back and stays usable.
    let rt = fields["refresh_token"].clone();
    for _ in 0..2 {
        let again = send(
            Method::POST,
            &url,
            &[("accept", "application/json")],
            form(&[
                ("client_id", "49521b236a3e8937"),
                ("client_secret", "fake-client-secret"),
                ("grant_type", "refresh_token"),
                ("refresh_token", &rt),
            ]),
        )
        .await;
        assert_eq!(again.header(CONTENT_TYPE), "application/json");
        assert_eq!(again.json()["refresh_token"], rt.as_str());
    }
    assert_eq!(fake.refreshes(), 2);
}
