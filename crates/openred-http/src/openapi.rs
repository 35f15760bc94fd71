//! The parts of an OpenAPI document that every OpenRed API shares, added
//! at assembly so that no operation can forget them: the answers of the
//! shared JSON body extractor (400, 413, 415, 422) on every operation with
//! a request body, each with the one error body `{"error", "message"}`.

use openred_core::wire::{
    Base64Text, Bytes16, Bytes32, CursorText, ErrorBody, FingerprintText, NodeIdText, SeqNumber,
    SignatureText, SignedRecordText, UnixSeconds,
};
use utoipa::openapi::path::Operation;
use utoipa::openapi::{ContentBuilder, OpenApi, RefOr, Response, ResponseBuilder};
use utoipa::{PartialSchema, ToSchema};

/// What the JSON body extractor answers besides the handler's own errors
/// (see `ApiError::from(JsonRejection)`), and the body limit of [`crate::harden`].
const BODY_ERRORS: [(&str, &str); 4] = [
    ("400", "The body is not valid JSON, or a value in it is refused"),
    ("413", "The body is larger than the server's limit (body_too_large)"),
    (
        "415",
        "The body is not sent as `Content-Type: application/json` (unsupported_media_type)",
    ),
    (
        "422",
        "The JSON does not have the request's shape: a missing, unknown or mistyped field (bad_json)",
    ),
];

/// A response whose body is the error body, `{"error": CODE, "message": TEXT}`.
pub fn error_response(description: &str) -> RefOr<Response> {
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                        ErrorBody::name(),
                    ))))
                    .build(),
            )
            .build(),
    )
}

/// Adds the shared answers to every operation of `doc`, keeping those an
/// operation documents itself (its description is more precise), and
/// registers the error body's schema and those of the text forms
/// (`openred_core::wire::schema`), which fields and parameters refer to.
pub fn complete(doc: &mut OpenApi) {
    for item in doc.paths.paths.values_mut() {
        for operation in [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.delete,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
        {
            complete_operation(operation);
        }
    }
    let components = doc.components.get_or_insert_with(Default::default);
    for (name, schema) in [
        (ErrorBody::name(), ErrorBody::schema()),
        (NodeIdText::name(), NodeIdText::schema()),
        (FingerprintText::name(), FingerprintText::schema()),
        (Bytes16::name(), Bytes16::schema()),
        (Bytes32::name(), Bytes32::schema()),
        (SignatureText::name(), SignatureText::schema()),
        (SignedRecordText::name(), SignedRecordText::schema()),
        (Base64Text::name(), Base64Text::schema()),
        (CursorText::name(), CursorText::schema()),
        (SeqNumber::name(), SeqNumber::schema()),
        (UnixSeconds::name(), UnixSeconds::schema()),
    ] {
        components
            .schemas
            .entry(name.into_owned())
            .or_insert(schema);
    }
}

fn complete_operation(operation: &mut Operation) {
    if operation.request_body.is_none() {
        return;
    }
    for (status, description) in BODY_ERRORS {
        operation
            .responses
            .responses
            .entry(status.to_owned())
            .or_insert_with(|| error_response(description));
    }
}
