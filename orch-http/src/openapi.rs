//! The OpenAPI document, generated from the handlers' `#[utoipa::path]` attributes and the
//! request and response types.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "orch", description = "The HTTP API of the orch task orchestrator"),
    paths(
        routes::health::health,
        routes::misc::metrics,
        routes::misc::plugins,
        routes::auth::login,
        routes::auth::create_user,
        routes::auth::list_users,
        routes::auth::unlock_user,
        routes::auth::update_user,
        routes::auth::delete_user,
        routes::jobs::dispatch,
        routes::jobs::get_job,
        routes::jobs::list_jobs,
        routes::jobs::cancel_job,
        routes::jobs::job_events,
        routes::jobs::update_status,
        routes::jobs::claim,
        routes::jobs::heartbeat,
        routes::webhook::webhook,
        routes::sse::events,
        routes::locks::list_locks,
        routes::locks::get_lock,
        routes::locks::acquire,
        routes::locks::extend,
        routes::locks::release,
    ),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

/// The OpenAPI 3.1 document of the API.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}
