//! The OpenAPI document of the admin API (`GET /admin/v1/openapi.json`):
//! every admin route, the core's and the built-in modules', with what each
//! accepts and every status it can answer.
//!
//! The routes are built by their owners (`admin.rs`, each module's
//! `admin_routes`), many as closures, so the document is assembled here
//! from one table rather than from annotations on handlers. The test
//! `admin_openapi_document_matches_the_router` (tests/admin_openapi.rs)
//! probes the running router with every documented operation and a set of
//! undocumented ones, so that the table cannot drift from the routes.
//!
//! The document is served without authentication (behind the same `Host`
//! check as the rest of the admin API): it is the same for every node of a
//! version and holds nothing about this node, and tools that read it (the
//! project's Schemathesis run, a generated client) fetch it before they
//! hold a credential.

use std::sync::OnceLock;

use openred_core::wire::NodeIdText;
use utoipa::openapi::path::{
    HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn, PathItem,
};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, OpenApi, OpenApiBuilder, PathsBuilder, Ref,
    RefOr, Required, ResponseBuilder,
};
use utoipa::ToSchema;

use crate::modules::files::api::{CreateShare, FetchRequest};
use crate::modules::messaging::api::SendRequest;
use crate::owner::login::LoginRequest;
use crate::peer::PeerRequest;

/// The name of the bearer-token security scheme.
const BEARER: &str = "admin_token";

/// What an answer's body is.
#[derive(Clone, Copy)]
enum Body {
    /// A JSON object (its fields are listed in the route's description).
    Object,
    /// A JSON array of objects.
    Array,
    /// Prometheus text.
    Text,
    /// Server-sent events.
    Events,
}

/// Which errors a route can answer, besides those every authenticated
/// route shares (401, 403, 421, 503).
#[derive(Clone, Copy)]
struct Errors {
    bad_request: bool,
    not_found: bool,
    conflict: bool,
    too_large: bool,
    peer: bool,
}

const NONE: Errors = Errors {
    bad_request: false,
    not_found: false,
    conflict: false,
    too_large: false,
    peer: false,
};
/// A route whose input is checked (400) and names something that may not
/// exist (404).
const INPUT: Errors = Errors {
    bad_request: true,
    not_found: true,
    ..NONE
};
/// A route that reaches a peer: its failures are 502, a missing session or
/// peer 404, a concurrent attempt 409.
const PEER: Errors = Errors {
    bad_request: true,
    not_found: true,
    conflict: true,
    peer: true,
    ..NONE
};

/// One admin operation.
struct Route {
    method: HttpMethod,
    path: &'static str,
    summary: &'static str,
    tag: &'static str,
    /// The request body's schema, if the route takes one.
    body: Option<RefOr<Schema>>,
    params: Vec<utoipa::openapi::path::Parameter>,
    answer: Body,
    errors: Errors,
    /// False for the routes reached without a credential.
    authenticated: bool,
}

fn route(
    method: HttpMethod,
    path: &'static str,
    tag: &'static str,
    summary: &'static str,
    answer: Body,
    errors: Errors,
) -> Route {
    Route {
        method,
        path,
        summary,
        tag,
        body: None,
        params: Vec::new(),
        answer,
        errors,
        authenticated: true,
    }
}

impl Route {
    fn body<T: ToSchema>(mut self) -> Route {
        self.body = Some(RefOr::Ref(Ref::from_schema_name(T::name())));
        self
    }

    fn param(mut self, parameter: utoipa::openapi::path::Parameter) -> Route {
        self.params.push(parameter);
        self
    }

    fn open(mut self) -> Route {
        self.authenticated = false;
        self
    }
}

fn string_schema(pattern: Option<&str>, description: &str) -> RefOr<Schema> {
    RefOr::T(Schema::Object(
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(pattern)
            .description(Some(description))
            .build(),
    ))
}

/// A 128-bit ID in hex (message, file and transfer IDs).
const HEX_ID: &str = "^[0-9a-fA-F]{32}$";

fn path_param(name: &str, schema: RefOr<Schema>) -> utoipa::openapi::path::Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Path)
        .required(Required::True)
        .schema(Some(schema))
        .build()
}

fn query_param(
    name: &str,
    schema: RefOr<Schema>,
    description: &str,
) -> utoipa::openapi::path::Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Query)
        .required(Required::False)
        .description(Some(description))
        .schema(Some(schema))
        .build()
}

fn integer(minimum: u64, maximum: u64) -> RefOr<Schema> {
    RefOr::T(Schema::Object(
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(minimum as usize))
            .maximum(Some(maximum as usize))
            .build(),
    ))
}

fn node_id() -> RefOr<Schema> {
    RefOr::Ref(Ref::from_schema_name(NodeIdText::name()))
}

/// `?peer=&limit=&offset=` of the message lists.
fn list_params(route: Route) -> Route {
    route
        .param(query_param("peer", node_id(), "Only this peer's messages"))
        .param(query_param(
            "limit",
            integer(1, 10_000),
            "At most this many (default 100)",
        ))
        .param(query_param(
            "offset",
            integer(0, u64::MAX),
            "Skip this many first",
        ))
}

fn routes() -> Vec<Route> {
    use Body::*;
    use HttpMethod::{Get, Post};
    vec![
        route(
            Post,
            "/admin/v1/login",
            "owner",
            "Log in with the password and a TOTP code; answers a session cookie",
            Object,
            Errors {
                bad_request: true,
                conflict: true,
                ..NONE
            },
        )
        .body::<LoginRequest>()
        .open(),
        route(
            Post,
            "/admin/v1/logout",
            "owner",
            "End the cookie's session",
            Object,
            NONE,
        )
        .open(),
        route(
            Post,
            "/admin/v1/login/unlock",
            "owner",
            "Lift a login lock-out",
            Object,
            Errors {
                conflict: true,
                ..NONE
            },
        ),
        route(
            Get,
            "/admin/v1/openapi.json",
            "node",
            "This document",
            Object,
            NONE,
        )
        .open(),
        route(
            Get,
            "/admin/v1/status",
            "node",
            "Identity, protections, sessions, modules, readiness",
            Object,
            NONE,
        ),
        route(
            Get,
            "/admin/v1/peers",
            "node",
            "The directory's nodes, their records verified",
            Array,
            Errors { peer: true, ..NONE },
        ),
        route(
            Post,
            "/admin/v1/connect",
            "node",
            "Ask for an introduction and hold a session with a peer",
            Object,
            PEER,
        )
        .body::<PeerRequest>(),
        route(
            Post,
            "/admin/v1/ping",
            "node",
            "An encrypted round trip to a peer",
            Object,
            PEER,
        )
        .body::<PeerRequest>(),
        route(
            Post,
            "/admin/v1/renew",
            "node",
            "Renew the session with a peer, without the directory",
            Object,
            PEER,
        )
        .body::<PeerRequest>(),
        route(
            Get,
            "/admin/v1/modules",
            "modules",
            "The modules, their state and metrics",
            Array,
            NONE,
        ),
        route(
            Post,
            "/admin/v1/modules/{name}/{action}",
            "modules",
            "Switch a module on (`enable`) or off (`disable`)",
            Object,
            Errors {
                not_found: true,
                ..NONE
            },
        )
        .param(path_param(
            "name",
            string_schema(Some("^[a-z0-9-]+$"), "The module's name"),
        ))
        .param(path_param(
            "action",
            RefOr::T(Schema::Object(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some(["enable", "disable"]))
                    .build(),
            )),
        )),
        route(
            Get,
            "/admin/v1/audit",
            "node",
            "The audit log's entries, details opened",
            Object,
            Errors {
                bad_request: true,
                ..NONE
            },
        )
        .param(query_param(
            "since",
            integer(0, u64::MAX),
            "Entries from this time on (Unix seconds)",
        ))
        .param(query_param(
            "limit",
            integer(1, crate::audit::MAX_AUDIT_ENTRIES as u64),
            "The last this many at most (default 1000)",
        )),
        route(
            Post,
            "/admin/v1/auth/challenge",
            "auth",
            "Have a peer re-prove its identity in the session",
            Object,
            PEER,
        )
        .body::<PeerRequest>(),
        route(
            Get,
            "/admin/v1/auth/proofs",
            "auth",
            "The peers' last proofs",
            Array,
            Errors {
                not_found: true,
                ..NONE
            },
        ),
        route(
            Post,
            "/admin/v1/messages",
            "messaging",
            "Send a message (persisted, then retried until acknowledged)",
            Object,
            Errors {
                too_large: true,
                ..INPUT
            },
        )
        .body::<SendRequest>(),
        list_params(route(
            Get,
            "/admin/v1/messages/inbox",
            "messaging",
            "Messages received",
            Array,
            INPUT,
        )),
        list_params(route(
            Get,
            "/admin/v1/messages/outbox",
            "messaging",
            "Messages sent and their delivery",
            Array,
            INPUT,
        )),
        route(
            Get,
            "/admin/v1/messages/outbox/{message_id}",
            "messaging",
            "One message of the outbox",
            Object,
            INPUT,
        )
        .param(path_param(
            "message_id",
            string_schema(Some(HEX_ID), "32 hex digits"),
        )),
        route(
            Get,
            "/admin/v1/messages/stream",
            "messaging",
            "New messages as server-sent events",
            Events,
            Errors {
                not_found: true,
                ..NONE
            },
        ),
        route(
            Get,
            "/admin/v1/files/shares",
            "files",
            "This node's shares",
            Array,
            Errors {
                not_found: true,
                ..NONE
            },
        ),
        route(
            Post,
            "/admin/v1/files/shares",
            "files",
            "Share a file with peers",
            Object,
            Errors {
                conflict: true,
                ..INPUT
            },
        )
        .body::<CreateShare>(),
        route(
            Post,
            "/admin/v1/files/shares/{file_id}/revoke",
            "files",
            "Revoke a share",
            Object,
            INPUT,
        )
        .param(path_param(
            "file_id",
            string_schema(Some(HEX_ID), "32 hex digits"),
        )),
        route(
            Get,
            "/admin/v1/files/offers",
            "files",
            "Files peers offered to this node",
            Array,
            Errors {
                not_found: true,
                ..NONE
            },
        ),
        route(
            Post,
            "/admin/v1/files/fetch",
            "files",
            "Download a peer's shared file (resumable)",
            Object,
            Errors {
                conflict: true,
                peer: true,
                ..INPUT
            },
        )
        .body::<FetchRequest>(),
        route(
            Get,
            "/admin/v1/files/transfers",
            "files",
            "Transfers both ways, with progress",
            Array,
            Errors {
                not_found: true,
                ..NONE
            },
        ),
        route(
            Get,
            "/admin/v1/files/transfers/{transfer_id}",
            "files",
            "One transfer",
            Object,
            INPUT,
        )
        .param(path_param(
            "transfer_id",
            string_schema(Some(HEX_ID), "32 hex digits"),
        )),
        route(
            Get,
            "/metrics",
            "monitoring",
            "Prometheus metrics",
            Text,
            Errors {
                not_found: true,
                ..NONE
            },
        ),
    ]
}

fn error(description: &str) -> RefOr<utoipa::openapi::Response> {
    openred_http::openapi::error_response(description)
}

fn answer(body: Body) -> RefOr<utoipa::openapi::Response> {
    let object = || ObjectBuilder::new().schema_type(Type::Object).build();
    let (content_type, schema): (&str, RefOr<Schema>) = match body {
        Body::Object => ("application/json", RefOr::T(Schema::Object(object()))),
        Body::Array => (
            "application/json",
            RefOr::T(Schema::Array(ArrayBuilder::new().items(object()).build())),
        ),
        Body::Text => (
            "text/plain",
            RefOr::T(Schema::Object(
                ObjectBuilder::new().schema_type(Type::String).build(),
            )),
        ),
        Body::Events => (
            "text/event-stream",
            RefOr::T(Schema::Object(
                ObjectBuilder::new().schema_type(Type::String).build(),
            )),
        ),
    };
    RefOr::T(
        ResponseBuilder::new()
            .description("Done")
            .content(
                content_type,
                ContentBuilder::new().schema(Some(schema)).build(),
            )
            .build(),
    )
}

fn operation(route: &Route) -> utoipa::openapi::path::Operation {
    let mut op = OperationBuilder::new()
        .summary(Some(route.summary))
        .tag(route.tag)
        .response("200", answer(route.answer))
        .response(
            "421",
            error("The Host header names neither an IP address nor localhost (bad_host)"),
        );
    for parameter in &route.params {
        op = op.parameter(parameter.clone());
    }
    if let Some(schema) = &route.body {
        op = op.request_body(Some(
            RequestBodyBuilder::new()
                .required(Some(Required::True))
                .content(
                    "application/json",
                    ContentBuilder::new().schema(Some(schema.clone())).build(),
                )
                .build(),
        ));
    }
    if route.authenticated {
        op = op
            .security(SecurityRequirement::new::<_, [&str; 0], &str>(BEARER, []))
            .response("401", error("No valid bearer token or login session (unauthorized)"))
            .response(
                "403",
                error("A cookie-authenticated request that changes something lacks the request header"),
            )
            .response("503", error("The node cannot serve this now (its store, agent or audit log)"));
    }
    let e = route.errors;
    if e.bad_request {
        op = op.response(
            "400",
            error("A value in the request is refused; the code names it"),
        );
    }
    if e.not_found {
        op = op.response(
            "404",
            error("No such thing, or the module is switched off (module_disabled)"),
        );
    }
    if e.conflict {
        op = op.response(
            "409",
            error("Conflicts with the current state (e.g. busy, already set)"),
        );
    }
    if e.too_large {
        op = op.response("413", error("Larger than the node accepts"));
    }
    if e.peer {
        op = op.response(
            "502",
            error("The directory or the peer refused or could not be reached"),
        );
    }
    if route.path == "/admin/v1/login" {
        op = op
            .response("401", error("Wrong password or code"))
            .response(
                "429",
                error("Locked out after failed logins; Retry-After says how long"),
            )
            .response(
                "503",
                error("The attempt could not be recorded (unavailable)"),
            );
    }
    op.build()
}

/// The admin API's document.
pub fn document() -> OpenApi {
    let mut paths = PathsBuilder::new();
    let mut items: Vec<(&str, PathItem)> = Vec::new();
    for route in routes() {
        let op = operation(&route);
        match items.iter_mut().find(|(path, _)| *path == route.path) {
            Some((_, item)) => {
                let merged = PathItem::new(route.method, op);
                item.merge_operations(merged);
            }
            None => items.push((route.path, PathItem::new(route.method, op))),
        }
    }
    for (path, item) in items {
        paths = paths.path(path, item);
    }
    let mut schemas = Vec::new();
    LoginRequest::schemas(&mut schemas);
    PeerRequest::schemas(&mut schemas);
    SendRequest::schemas(&mut schemas);
    CreateShare::schemas(&mut schemas);
    FetchRequest::schemas(&mut schemas);
    let components = ComponentsBuilder::new()
        .schema_from::<LoginRequest>()
        .schema_from::<PeerRequest>()
        .schema_from::<SendRequest>()
        .schema_from::<CreateShare>()
        .schema_from::<FetchRequest>()
        .schemas_from_iter(schemas)
        .security_scheme(
            BEARER,
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        )
        .build();
    let mut doc = OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("OpenRed node admin API")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "The node owner's API, on the admin listener (loopback by default). \
                     Authenticated by the bearer token in DATA/admin.token, or by a login \
                     session cookie (docs/AUTH.md). Module routes answer 404 module_disabled \
                     while their module is off.",
                ))
                .build(),
        )
        .paths(paths.build())
        .components(Some(components))
        .build();
    openred_http::openapi::complete(&mut doc);
    doc
}

/// The document as JSON, built once.
pub fn json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| {
        serde_json::to_string_pretty(&document())
            .unwrap_or_else(|e| format!(r#"{{"error":"openapi","message":"{e}"}}"#))
    })
}
