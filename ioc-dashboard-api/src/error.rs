//! Errors: every refusal is JSON `{"error": code, "message": text}` (with `problems`, one per
//! field, for a body that fails validation); a failing dependency is logged and answered 503
//! without its internal text.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::json;

/// An error answer.
#[derive(Debug)]
pub struct ApiFailure {
    status: StatusCode,
    code: &'static str,
    pub(crate) message: String,
    pub(crate) problems: Vec<FieldProblem>,
}

#[derive(Debug, Serialize)]
pub struct FieldProblem {
    pub field: &'static str,
    pub message: String,
}

impl ApiFailure {
    pub(crate) fn new(
        status: StatusCode,
        code: &'static str,
        message: impl Into<String>,
    ) -> ApiFailure {
        ApiFailure {
            status,
            code,
            message: message.into(),
            problems: Vec::new(),
        }
    }

    /// 422 with every problem found.
    pub(crate) fn invalid(message: &str, problems: Vec<FieldProblem>) -> ApiFailure {
        let mut failure = ApiFailure::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message);
        failure.problems = problems;
        failure
    }

    pub(crate) fn unavailable(context: &str, error: impl std::fmt::Display) -> ApiFailure {
        tracing::error!(error = %error, "{context}");
        ApiFailure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("{context}; try again shortly"),
        )
    }
}

impl IntoResponse for ApiFailure {
    fn into_response(self) -> Response {
        let mut body = json!({"error": self.code, "message": self.message});
        if !self.problems.is_empty() {
            body["problems"] = json!(self.problems);
        }
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                "Bearer".parse().expect("static header"),
            );
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiFailure>;

pub fn not_found_device(id: &str) -> ApiFailure {
    ApiFailure::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no device {id:?}"),
    )
}

/// Any route the API does not have.
pub async fn not_found() -> ApiFailure {
    ApiFailure::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}
