//! `DELETE /api/v1/repositories/{url}`: forgets a repository and its credentials.
//! The URL is percent-encoded in the path, as `argocd repo rm` sends it.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::delete;
use serde_json::json;

use super::{ApiState, Reply, error, failed, ok};

pub(super) fn routes() -> axum::Router<ApiState> {
    axum::Router::new().route("/api/v1/repositories/{url}", delete(remove))
}

async fn remove(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(url): Path<String>,
) -> Reply {
    // A user knows the URL as the list shows it, without credentials.
    let found = state
        .store
        .repos()
        .unwrap_or_default()
        .into_iter()
        .find(|r| r.url == url || r.spec().redacted_url() == url);
    let Some(record) = found else {
        // Someone who may not delete it learns nothing of whether it exists.
        if let Err(reply) = state.allow(&headers, "repositories", "delete", &url) {
            return reply;
        }
        return error(
            StatusCode::NOT_FOUND,
            format!("repository {url:?} not found"),
        );
    };
    let shown = record.spec().redacted_url();
    let who = match state.allow(&headers, "repositories", "delete", &record.url) {
        Ok(who) => who,
        Err(reply) => return reply,
    };
    match state.store.remove_repo(&record).await {
        Ok(_) => {
            state
                .audit(&who, "delete", format!("repository/{shown}"))
                .await;
            ok(json!({ "deleted": shown }))
        }
        Err(e) => failed(&e),
    }
}
