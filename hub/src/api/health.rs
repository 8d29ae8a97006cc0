//! `/healthz` (the process answers), `/readyz` (the store is open and the agent
//! link is bound) and `/metrics` (Prometheus text). None of them needs a token:
//! probes and scrapers carry none, and none of them shows a secret.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use super::{ApiState, error};
use crate::metrics;

pub(super) fn routes() -> axum::Router<ApiState> {
    axum::Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(scrape))
}

async fn healthz() -> Response {
    axum::Json(json!({ "status": "ok" })).into_response()
}

async fn readyz(State(state): State<ApiState>) -> Response {
    if let Err(e) = state.store.clusters() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the store is not readable: {e}"),
        )
        .into_response();
    }
    let link = match &state.link {
        None => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the agent link is not running",
            )
            .into_response();
        }
        Some(link) => link.local_addr(),
    };
    match link {
        Ok(addr) => {
            axum::Json(json!({ "status": "ready", "agentLink": addr.to_string() })).into_response()
        }
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the agent link is not bound: {e}"),
        )
        .into_response(),
    }
}

async fn scrape(State(state): State<ApiState>) -> Response {
    let store = state.store.clone();
    let link = state.link.clone();
    let fleet = state
        .metrics
        .fleet_snapshot(move || {
            let connected = link.as_ref().and_then(|link| {
                link.clusters()
                    .ok()
                    .map(|views| views.iter().filter(|v| v.connected).count() as u64)
            });
            metrics::snapshot(&store, link.as_deref(), connected)
        })
        .await;
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics::encode(&state.metrics, &fleet),
    )
        .into_response()
}
