//! The local service interface: HTTP/JSON under `/v1`, server-sent events, Prometheus metrics and
//! the OpenAPI contract. Every handler is a thin translation to one [`Node`] call.

mod apps;
mod audit;
mod auth;
mod body;
mod dashboard;
pub mod error;
mod flows;
mod grants;
mod mesh;
mod records;
mod routes;
mod view;

use std::future::Future;
use std::sync::{Arc, OnceLock};

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{delete, get, post, put};
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::node::Node;

/// What every handler gets.
#[derive(Clone)]
pub struct ApiState {
    /// The node served.
    pub node: Node,
    /// Its mesh service, when it runs one.
    pub mesh: MeshSlot,
    /// Flips to true when the server begins to shut down, ending event streams.
    pub closing: watch::Receiver<bool>,
}

/// Where the API finds the node's mesh: none (library users that serve only the local API), or
/// one that starts once the node's datasets are loaded (answering `starting` until then).
#[derive(Clone, Default)]
pub struct MeshSlot(Option<Arc<OnceLock<crate::mesh::Mesh>>>);

impl MeshSlot {
    /// A mesh that [`Self::set`] provides later.
    pub fn later() -> Self {
        Self(Some(Arc::default()))
    }

    /// Provides the mesh of a slot made by [`Self::later`].
    pub fn set(&self, mesh: crate::mesh::Mesh) {
        if let Some(cell) = &self.0 {
            let _ = cell.set(mesh);
        }
    }

    /// The mesh once it runs: `None` when the node has none, `Some(None)` while it starts.
    fn get(&self) -> Option<Option<&crate::mesh::Mesh>> {
        self.0.as_ref().map(|cell| cell.get())
    }
}

impl From<Option<crate::mesh::Mesh>> for MeshSlot {
    fn from(mesh: Option<crate::mesh::Mesh>) -> Self {
        Self(mesh.map(|m| Arc::new(OnceLock::from(m))))
    }
}

/// The API's router for a node without the mesh (its mesh endpoints answer 503).
pub fn router(node: Node, closing: watch::Receiver<bool>) -> Router {
    router_with(node, None, closing)
}

/// The API's router, shared by the binary and the tests.
pub fn router_with(
    node: Node,
    mesh: impl Into<MeshSlot>,
    closing: watch::Receiver<bool>,
) -> Router {
    let limit = node.config().max_body_bytes;
    let ds = "/v1/datasets/{owner}/{name}";
    Router::new()
        .route("/v1/node", get(routes::node_info))
        .route(
            "/v1/datasets",
            get(routes::list_datasets).post(routes::create_dataset),
        )
        .route(ds, get(routes::get_dataset))
        .route(
            &format!("{ds}/records"),
            get(records::query).post(records::publish),
        )
        .route(
            &format!("{ds}/records/{{id}}"),
            get(records::get_one).delete(records::delete_one),
        )
        .route(&format!("{ds}/events"), get(records::events))
        .route("/v1/apps", get(apps::list).post(apps::add))
        .route("/v1/apps/{name}", delete(apps::remove))
        .route("/v1/apps/{name}/rotate", post(apps::rotate))
        .route("/v1/apps/{name}/rights", put(apps::set_rights))
        .route("/v1/admin/rotate-token", post(apps::rotate_admin))
        .route("/v1/grants", get(grants::list).post(grants::grant))
        .route("/v1/flows", get(flows::list).post(flows::add))
        .route("/v1/flows/{name}", delete(flows::remove))
        .route("/v1/query", post(view::query))
        .route("/v1/sql", post(view::sql))
        .route("/v1/search", post(view::search))
        .route("/v1/grants/{id}", delete(grants::revoke))
        .route("/v1/peers", get(mesh::peers))
        .route("/v1/mesh", get(mesh::status))
        .route("/v1/invites", post(mesh::invite))
        .route("/v1/join", post(mesh::join))
        .route("/v1/members", get(mesh::members))
        .route("/v1/members/{org}", delete(mesh::remove_member))
        .route("/v1/members/{org}/role", post(mesh::set_role))
        .route("/v1/key/rotate", post(mesh::rotate_key))
        .route("/v1/audit", get(audit::list))
        .route("/v1/audit/verify", get(audit::verify))
        .route("/v1/audit/events", get(audit::events))
        .route("/v1/openapi.json", get(routes::openapi))
        .route("/metrics", get(routes::metrics))
        .merge(dashboard::routes())
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(
            node.clone(),
            audit::record_refusals,
        ))
        .layer(middleware::from_fn_with_state(node.clone(), count_errors))
        .layer(middleware::from_fn(guard_headers))
        .with_state(ApiState {
            node,
            mesh: mesh.into(),
            closing,
        })
}

/// Counts every 4xx and 5xx answer in `fogmesh_api_errors_total{status=...}`.
async fn count_errors(State(node): State<Node>, req: Request, next: Next) -> Response {
    let res = next.run(req).await;
    let status = res.status();
    if status.is_client_error() || status.is_server_error() {
        let labels = vec![("status".to_owned(), status.as_u16().to_string())];
        node.metrics().api_errors.get_or_create(&labels).inc();
    }
    res
}

/// Every answer: no content sniffing; one that sets no Content-Security-Policy of its own (every
/// one but the dashboard's page and files) may load nothing and be framed by no page, since the
/// dashboard, which holds a token, shares the API's origin.
async fn guard_headers(req: Request, next: Next) -> Response {
    use axum::http::{header, HeaderValue};
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(
            "default-src 'none'; frame-ancestors 'none'",
        ));
    res
}

/// Serves the API on `listener` until `shutdown` resolves, then ends event streams and waits for
/// requests in flight.
pub async fn serve(
    listener: TcpListener,
    node: Node,
    mesh: impl Into<MeshSlot>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (tx, rx) = watch::channel(false);
    let app = router_with(node, mesh, rx);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            let _ = tx.send(true);
        })
        .await
}
