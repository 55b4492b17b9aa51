//! Concurrent requests on a cold credential share one mint.

mod common;

use common::{TestEnv, bounded};
use http::StatusCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_cold_requests_mint_once() {
    bounded(120, "200 concurrent requests", async {
        let env = TestEnv::start(
            r#"
            - name: yanqianyu
              match: { path_prefix: /orgs/yanqianyu }
              installation: { id: 14 }
            - name: by-account
              match: { path_prefix: /as/hanshu }
              strip_prefix: true
              installation: { account: hanshuorg2 }
            "#,
            &[(14, "yanqianyu"), (18, "hanshuorg2")],
        )
        .await;
        assert_eq!(env.fake.mint_count(), 0, "the credential starts cold");

        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..200 {
            let client = env.client.clone();
            let url = if i % 2 == 0 {
                env.url(&format!("/orgs/yanqianyu/n{i}"))
            } else {
                env.url(&format!("/as/hanshu/orgs/hanshuorg2/n{i}"))
            };
            tasks.spawn(async move {
                let req = common::request(http::Method::GET, &url, &[], common::full(""));
                common::send(&client, req).await
            });
        }
        let mut ok = 0;
        while let Some(reply) = tasks.join_next().await {
            let reply = reply.expect("request task");
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
            ok += 1;
        }
        assert_eq!(ok, 200);
        assert_eq!(env.fake.mints_for(14), 1, "one mint for installation 14");
        assert_eq!(env.fake.mints_for(18), 1, "one mint for installation 18");
        assert_eq!(
            env.fake.installation_list_count(),
            1,
            "one installation listing for the account route"
        );
        assert_eq!(env.fake.api_requests().len(), 200);
        env.shutdown().await;
    })
    .await
}
