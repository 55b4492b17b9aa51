//! Shutdown drains: a request in flight completes, new connections are refused.

mod common;

use common::{TestEnv, bounded};
use http::{Method, StatusCode};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_requests_complete_and_new_connections_are_refused() {
    bounded(60, "graceful shutdown", async {
        let mut env = TestEnv::start(
            r#"
            - name: slow
              match: { path_prefix: /slow }
              installation: { id: 14 }
            "#,
            &[(14, "yanqianyu")],
        )
        .await;
        let addr = env.addr;

        let client = env.client.clone();
        let url = env.url("/slow/1500");
        let in_flight = tokio::spawn(async move {
            common::send(
                &client,
                common::request(Method::GET, &url, &[], common::full("")),
            )
            .await
        });
        // Wait until the request has reached the upstream: it is in flight.
        bounded(10, "the slow request reaches the fake", async {
            while !env
                .fake
                .api_requests()
                .iter()
                .any(|r| r.path == "/slow/1500")
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;

        let running = env.running.take().expect("the proxy runs");
        let shutdown = tokio::spawn(running.shutdown());

        // While the slow request drains, the listener is already closed and
        // shutdown is still waiting for it.
        common::wait_until_refused(addr, 5).await;
        // The slow request still has over a second to go.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!in_flight.is_finished(), "the slow request ended early");
        assert!(
            !shutdown.is_finished(),
            "shutdown did not wait for the drain"
        );

        let reply = bounded(10, "the in-flight request", in_flight)
            .await
            .expect("request task");
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(reply.json()["slept"], 1500);
        bounded(10, "shutdown returns", shutdown)
            .await
            .expect("shutdown task");

        // And after shutdown, nothing listens.
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "the proxy still accepts connections after shutdown"
        );
        env.shutdown().await;
    })
    .await
}
