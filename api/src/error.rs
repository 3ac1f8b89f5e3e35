//! API errors, modelled on Kubernetes' `Status` reasons, and their one mapping to gRPC codes.
//! The server turns an [`ApiError`] into a `tonic::Status` with [`ApiError::to_status`]; the
//! client turns it back with [`ApiError::from_status`] (the reason and field causes travel as
//! JSON in the status details), so both sides agree on what went wrong.

use serde::{Deserialize, Serialize};
use std::fmt;
use tonic::Code;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reason {
    NotFound,
    AlreadyExists,
    /// Stale resourceVersion or failed precondition on an object's version.
    Conflict,
    /// The object is invalid; `causes` name the fields.
    Invalid,
    /// The request itself is malformed (bad selector, unknown resource, undecodable body).
    BadRequest,
    /// Valid, but not allowed in the object's current state (terminating namespace, …).
    Forbidden,
    /// The requested resourceVersion is older than the history kept: relist.
    Expired,
    /// A watcher fell behind or a limit was reached: resume or retry later.
    TooManyRequests,
    Unavailable,
    /// The server could not answer in time (HTTP 504), e.g. a resourceVersion it has not
    /// reached yet.
    Timeout,
    /// The body's content type is not one the verb takes (HTTP 415).
    UnsupportedMediaType,
    /// The request's credentials (bearer token) are not valid.
    Unauthorized,
    Internal,
}

impl Reason {
    /// The one place API reasons map to gRPC codes.
    pub fn code(self) -> Code {
        match self {
            Reason::NotFound => Code::NotFound,
            Reason::AlreadyExists => Code::AlreadyExists,
            Reason::Conflict => Code::Aborted,
            Reason::Invalid | Reason::BadRequest | Reason::UnsupportedMediaType => {
                Code::InvalidArgument
            }
            Reason::Forbidden => Code::PermissionDenied,
            Reason::Expired => Code::OutOfRange,
            Reason::TooManyRequests => Code::ResourceExhausted,
            Reason::Unauthorized => Code::Unauthenticated,
            Reason::Unavailable => Code::Unavailable,
            Reason::Timeout => Code::DeadlineExceeded,
            Reason::Internal => Code::Internal,
        }
    }

    /// Kubernetes' HTTP status for the reason.
    pub fn http_code(self) -> u16 {
        match self {
            Reason::NotFound => 404,
            Reason::AlreadyExists | Reason::Conflict => 409,
            Reason::Invalid => 422,
            Reason::BadRequest => 400,
            Reason::UnsupportedMediaType => 415,
            Reason::Forbidden => 403,
            Reason::Expired => 410,
            Reason::TooManyRequests => 429,
            Reason::Unauthorized => 401,
            Reason::Unavailable => 503,
            Reason::Timeout => 504,
            Reason::Internal => 500,
        }
    }

    /// Kubernetes' `StatusReason` name.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NotFound => "NotFound",
            Reason::AlreadyExists => "AlreadyExists",
            Reason::Conflict => "Conflict",
            Reason::Invalid => "Invalid",
            Reason::BadRequest => "BadRequest",
            Reason::UnsupportedMediaType => "UnsupportedMediaType",
            Reason::Forbidden => "Forbidden",
            Reason::Expired => "Expired",
            Reason::TooManyRequests => "TooManyRequests",
            Reason::Unauthorized => "Unauthorized",
            Reason::Unavailable => "ServiceUnavailable",
            Reason::Timeout => "Timeout",
            Reason::Internal => "InternalError",
        }
    }

    fn from_code(code: Code) -> Reason {
        match code {
            Code::NotFound => Reason::NotFound,
            Code::AlreadyExists => Reason::AlreadyExists,
            Code::Aborted => Reason::Conflict,
            Code::InvalidArgument => Reason::BadRequest,
            Code::FailedPrecondition | Code::PermissionDenied => Reason::Forbidden,
            Code::OutOfRange => Reason::Expired,
            Code::ResourceExhausted => Reason::TooManyRequests,
            Code::Unauthenticated => Reason::Unauthorized,
            Code::DeadlineExceeded => Reason::Timeout,
            Code::Unavailable | Code::Cancelled => Reason::Unavailable,
            _ => Reason::Internal,
        }
    }
}

/// Kubernetes' field error types, as in `field.ErrorType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FieldErrorType {
    Required,
    Invalid,
    NotSupported,
    Duplicate,
    Forbidden,
    TooLong,
    /// Server-side apply: another field manager owns the field (`message` names it).
    ManagerConflict,
}

/// One problem with one field: `spec.containers[0].image: Required value`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    pub field: String,
    #[serde(rename = "type")]
    pub kind: FieldErrorType,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let prefix = match self.kind {
            FieldErrorType::Required => "Required value",
            FieldErrorType::Invalid => "Invalid value",
            FieldErrorType::NotSupported => "Unsupported value",
            FieldErrorType::Duplicate => "Duplicate value",
            FieldErrorType::Forbidden => "Forbidden",
            FieldErrorType::TooLong => "Too long",
            FieldErrorType::ManagerConflict => "Conflict",
        };
        if self.message.is_empty() {
            write!(f, "{}: {prefix}", self.field)
        } else {
            write!(f, "{}: {prefix}: {}", self.field, self.message)
        }
    }
}

/// Collects field errors under a path, the way Kubernetes' `field.Path` does.
#[derive(Debug, Default)]
pub struct Errors(pub Vec<FieldError>);

impl Errors {
    pub fn push(&mut self, field: impl Into<String>, kind: FieldErrorType, msg: impl Into<String>) {
        self.0.push(FieldError { field: field.into(), kind, message: msg.into() });
    }
    pub fn required(&mut self, field: impl Into<String>, msg: impl Into<String>) {
        self.push(field, FieldErrorType::Required, msg)
    }
    /// A non-string value, shown as is: `Invalid value: -1: must be …`.
    pub fn invalid(&mut self, field: impl Into<String>, value: impl fmt::Display, msg: &str) {
        self.push(field, FieldErrorType::Invalid, format!("{value}: {msg}"))
    }
    /// A string value, quoted: `Invalid value: "Web": must be …`.
    pub fn invalid_str(&mut self, field: impl Into<String>, value: &str, msg: &str) {
        self.push(field, FieldErrorType::Invalid, format!("{value:?}: {msg}"))
    }
    pub fn not_supported(&mut self, field: impl Into<String>, value: &str, allowed: &[&str]) {
        let allowed: Vec<String> = allowed.iter().map(|a| format!("\"{a}\"")).collect();
        self.push(
            field,
            FieldErrorType::NotSupported,
            format!("\"{value}\": supported values: {}", allowed.join(", ")),
        )
    }
    pub fn duplicate(&mut self, field: impl Into<String>, value: &str) {
        self.push(field, FieldErrorType::Duplicate, format!("\"{value}\""))
    }
    pub fn forbidden(&mut self, field: impl Into<String>, msg: impl Into<String>) {
        self.push(field, FieldErrorType::Forbidden, msg)
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub struct ApiError {
    pub reason: Reason,
    pub message: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub causes: Vec<FieldError>,
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl ApiError {
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        ApiError { reason, message: message.into(), causes: Vec::new() }
    }
    pub fn not_found(what: &str, name: &str) -> Self {
        Self::new(Reason::NotFound, format!("{what} \"{name}\" not found"))
    }
    pub fn already_exists(what: &str, name: &str) -> Self {
        Self::new(Reason::AlreadyExists, format!("{what} \"{name}\" already exists"))
    }
    pub fn conflict(what: &str, name: &str, why: &str) -> Self {
        Self::new(
            Reason::Conflict,
            format!("Operation cannot be fulfilled on {what} \"{name}\": {why}"),
        )
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(Reason::BadRequest, message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(Reason::Forbidden, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(Reason::Internal, message)
    }
    /// `Deployment.apps "web" is invalid: [spec.replicas: Invalid value: -1: …, …]`
    pub fn invalid(what: &str, name: &str, causes: Vec<FieldError>) -> Self {
        let list: Vec<String> = causes.iter().map(|c| c.to_string()).collect();
        let detail =
            if list.len() == 1 { list[0].clone() } else { format!("[{}]", list.join(", ")) };
        ApiError {
            reason: Reason::Invalid,
            message: format!("{what} \"{name}\" is invalid: {detail}"),
            causes,
        }
    }

    pub fn code(&self) -> Code {
        self.reason.code()
    }

    /// Kubernetes' `Status` object for this error, as the HTTP API answers it. `details`
    /// names the object (`name`, `group`, `kind`: the resource's plural) when known.
    pub fn status_object(&self, name: &str, group: &str, kind: &str) -> serde_json::Value {
        let mut details = serde_json::Map::new();
        for (k, v) in [("name", name), ("group", group), ("kind", kind)] {
            if !v.is_empty() {
                details.insert(k.into(), v.into());
            }
        }
        if !self.causes.is_empty() {
            let causes = self
                .causes
                .iter()
                .map(|c| {
                    let reason = match c.kind {
                        FieldErrorType::Required => "FieldValueRequired",
                        FieldErrorType::Invalid => "FieldValueInvalid",
                        FieldErrorType::NotSupported => "FieldValueNotSupported",
                        FieldErrorType::Duplicate => "FieldValueDuplicate",
                        FieldErrorType::Forbidden => "FieldValueForbidden",
                        FieldErrorType::TooLong => "FieldValueTooLong",
                        FieldErrorType::ManagerConflict => "FieldManagerConflict",
                    };
                    let text = c.to_string();
                    let message = match c.kind {
                        FieldErrorType::ManagerConflict => &c.message,
                        _ => text.strip_prefix(&format!("{}: ", c.field)).unwrap_or(&text),
                    };
                    serde_json::json!({"reason": reason, "message": message, "field": c.field})
                })
                .collect();
            details.insert("causes".into(), serde_json::Value::Array(causes));
        }
        let mut v = serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": self.message, "reason": self.reason.as_str(),
            "code": self.reason.http_code()});
        if !details.is_empty() {
            v["details"] = serde_json::Value::Object(details);
        }
        v
    }

    pub fn to_status(&self) -> tonic::Status {
        let details = serde_json::to_vec(self).unwrap_or_default();
        tonic::Status::with_details(self.code(), self.message.clone(), details.into())
    }

    /// Recovers the server's error; a status from elsewhere (transport, proxy) keeps its code.
    pub fn from_status(status: &tonic::Status) -> Self {
        if let Ok(e) = serde_json::from_slice::<ApiError>(status.details()) {
            return e;
        }
        // A transport failure's cause (e.g. the HTTP/2 reason) is in the source chain, not in
        // the message ("h2 protocol error: http2 error").
        let mut message = status.message().to_string();
        let mut source = std::error::Error::source(status);
        while let Some(e) = source {
            let cause = e.to_string();
            if !message.contains(&cause) {
                message = format!("{message}: {cause}");
            }
            source = e.source();
        }
        ApiError::new(Reason::from_code(status.code()), message)
    }
}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> Self {
        e.to_status()
    }
}

impl From<tonic::Status> for ApiError {
    fn from(s: tonic::Status) -> Self {
        ApiError::from_status(&s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_failures_carry_their_cause() {
        // What hyper reports for a connection the server closed: the reason is two levels down.
        #[derive(Debug)]
        struct Wrapped(&'static str, Option<std::io::Error>);
        impl fmt::Display for Wrapped {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.0)
            }
        }
        impl std::error::Error for Wrapped {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                self.1.as_ref().map(|e| e as _)
            }
        }
        let cause = std::io::Error::other("connection error received: too_many_data_frames");
        let mut status = tonic::Status::unavailable("h2 protocol error: http2 error");
        status.set_source(std::sync::Arc::new(Wrapped("http2 error", Some(cause))));
        let e = ApiError::from_status(&status);
        assert_eq!(
            e.message,
            "h2 protocol error: http2 error: connection error received: too_many_data_frames"
        );
        // An API error of the server is taken as it is.
        let e = ApiError::from_status(
            &ApiError::new(Reason::NotFound, "pods \"x\" not found").to_status(),
        );
        assert_eq!((e.reason, e.message.as_str()), (Reason::NotFound, "pods \"x\" not found"));
    }

    #[test]
    fn status_round_trip_keeps_reason_and_causes() {
        let mut errs = Errors::default();
        errs.required("spec.selector", "");
        errs.invalid("spec.replicas", -1, "must be greater than or equal to 0");
        let e = ApiError::invalid("Deployment.apps", "web", errs.0);
        assert_eq!(
            e.message,
            "Deployment.apps \"web\" is invalid: [spec.selector: Required value, spec.replicas: Invalid value: -1: must be greater than or equal to 0]"
        );
        let s = e.to_status();
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(ApiError::from_status(&s), e);
        let foreign = tonic::Status::new(Code::Aborted, "x");
        assert_eq!(ApiError::from_status(&foreign).reason, Reason::Conflict);
    }
}
