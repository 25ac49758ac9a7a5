//! `/metrics` of a mesh read through the HTTP API as a Prometheus scrape reads it: members and
//! connected peers, what each node holds and received, pushes, pages served and questions; the
//! figures agree with `GET /v1/datasets` (what `fogmesh status` prints).

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

use crate::audit::{router, token};
use crate::mesh::{batch, publish, shared, spawn_mesh, view, wait_for, Member};

/// `GET /metrics` with the node's admin token: the exposition.
pub(crate) async fn scrape(m: &Member) -> String {
    let (r, _closing) = router(m);
    let req = Request::builder()
        .uri("/metrics")
        .header(header::AUTHORIZATION, format!("Bearer {}", token(m)))
        .body(Body::empty())
        .expect("request");
    let resp = r.oneshot(req).await.expect("infallible");
    assert_eq!(resp.status(), StatusCode::OK);
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    String::from_utf8(bytes.to_vec()).expect("text")
}

/// The value of `series` (its name and labels as exposed), if exposed.
pub(crate) fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_show_members_peers_what_is_held_and_what_moved() {
    let nodes = spawn_mesh(3).await;
    let (hospital, pharmacy) = (&nodes[0], &nodes[1]);
    let ds = shared(hospital, "cases", &["pharmacy"]).await;
    publish(hospital, &ds, batch("c", 0, 30)).await;
    publish(hospital, &ds, batch("d", 0, 12)).await;
    wait_for("the pharmacy reads 42 records", || async {
        view(pharmacy, &ds).len() == 42
    })
    .await;
    // The records may reach the pharmacy through the hospital before the two joiners have
    // connected to each other: the connections are what `fogmesh_peers_up` counts.
    for m in [hospital, pharmacy] {
        wait_for("every other member connected", || async {
            sample(&scrape(m).await, "fogmesh_peers_up") == Some(2.0)
        })
        .await;
    }

    let h = scrape(hospital).await;
    let p = scrape(pharmacy).await;
    for (org, text) in [("hospital", &h), ("pharmacy", &p)] {
        assert_eq!(sample(text, "fogmesh_members"), Some(3.0), "{org}:\n{text}");
        assert_eq!(
            sample(text, "fogmesh_peers_up"),
            Some(2.0),
            "{org}:\n{text}"
        );
        let series = "fogmesh_records{dataset=\"hospital/cases\"}";
        assert_eq!(sample(text, series), Some(42.0), "{org}:\n{text}");
        let envelopes = "fogmesh_envelopes{dataset=\"hospital/cases\"}";
        assert_eq!(sample(text, envelopes), Some(2.0), "{org}:\n{text}");
        assert!(sample(text, "fogmesh_store_bytes") > Some(0.0), "{org}");
        assert!(
            sample(text, "fogmesh_resident_memory_bytes") > Some(0.0),
            "{org}"
        );
    }
    assert_eq!(sample(&h, "fogmesh_datasets{role=\"owned\"}"), Some(1.0));
    assert_eq!(sample(&p, "fogmesh_datasets{role=\"replica\"}"), Some(1.0));
    // Both envelopes reached the pharmacy from the hospital, by push or by a page fetched.
    let got = sample(&p, "fogmesh_envelopes_received_total");
    assert_eq!(got, Some(2.0), "{p}");
    let sent = sample(&h, "fogmesh_pushes_total").unwrap_or(0.0)
        + sample(&h, "fogmesh_pages_served_total").unwrap_or(0.0);
    assert!(sent >= 1.0, "{h}");
    // The same figure `GET /v1/datasets` (and `fogmesh status`) gives.
    let listed = pharmacy.node.datasets(&pharmacy.admin);
    assert_eq!(listed[0].records, 42);
    // Scrapes at once (two Prometheus servers, Grafana) each read whole families.
    let at_once = futures::future::join_all((0..8).map(|_| scrape(pharmacy))).await;
    for text in at_once {
        let series = "fogmesh_records{dataset=\"hospital/cases\"}";
        assert_eq!(sample(&text, series), Some(42.0), "{text}");
        assert_eq!(sample(&text, "fogmesh_peers_up"), Some(2.0), "{text}");
    }

    // A member gone: no longer up, and its round trip no longer shown.
    let third = format!("fogmesh_peer_rtt_seconds{{org=\"{}\"}}", nodes[2].org);
    let pinged = |t: &str| sample(t, &third).is_some_and(|s| s > 0.0 && s < 5.0);
    wait_for("a round trip to the third member", || async {
        pinged(&scrape(hospital).await)
    })
    .await;
    nodes[2].mesh.shutdown().await;
    wait_for("the third member is down", || async {
        sample(&scrape(hospital).await, "fogmesh_peers_up") == Some(1.0)
    })
    .await;
    let h = scrape(hospital).await;
    assert_eq!(sample(&h, &third), None, "{h}");
}
