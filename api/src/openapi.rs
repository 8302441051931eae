//! The OpenAPI document: operations come from the handlers' `#[utoipa::path]` (the
//! same registration builds the router, see `routes::router`); this adds what every
//! operation shares: the bearer scheme and the one error shape as the `default`
//! response, so any status a client sees is described.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi as Spec, Ref, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use crate::error::{ErrorBody, ErrorDetail};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Coexist API",
        description = "A shared WhatsApp Business inbox: OTP login, reads from the stores, writes as commands (202 + command id; results on MQTT).",
    ),
    components(schemas(ErrorBody, ErrorDetail))
)]
pub struct ApiDoc;

/// Adds the shared parts to a finished document.
pub struct Shared;

impl Modify for Shared {
    fn modify(&self, spec: &mut Spec) {
        let components = spec.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
        let error = ResponseBuilder::new()
            .description("An error, in the one error shape (see `code`).")
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build();
        for item in spec.paths.paths.values_mut() {
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                op.responses
                    .responses
                    .entry("default".to_string())
                    .or_insert_with(|| error.clone().into());
            }
        }
    }
}

/// Request bodies that need an email or a phone: what a field-by-field derive cannot
/// say, added as `allOf: [the body, anyOf: [email given, phone given]]`.
const NEED_A_CONTACT: [&str; 2] = ["OtpRequest", "Invite"];

/// Adds to each of [`NEED_A_CONTACT`] that an email or a phone (a string) is required.
fn require_a_contact(spec: &mut Spec) {
    use utoipa::openapi::RefOr;
    use utoipa::openapi::schema::{AllOfBuilder, AnyOfBuilder, ObjectBuilder, Schema, Type};
    let Some(components) = spec.components.as_mut() else {
        return;
    };
    let given = |field: &str| {
        ObjectBuilder::new()
            .property(field, ObjectBuilder::new().schema_type(Type::String))
            .required(field)
            .build()
    };
    for name in NEED_A_CONTACT {
        if let Some(body) = components.schemas.remove(name) {
            let contact = AnyOfBuilder::new()
                .item(given("email"))
                .item(given("phone"))
                .build();
            let both = AllOfBuilder::new()
                .item(body)
                .item(Schema::AnyOf(contact))
                .build();
            components
                .schemas
                .insert(name.to_string(), RefOr::T(Schema::AllOf(both)));
        }
    }
}

/// The served document: `ApiDoc`'s header over the routes' operations.
pub fn finish(routes: Spec) -> Spec {
    let mut spec = ApiDoc::openapi();
    spec.merge(routes);
    Shared.modify(&mut spec);
    require_a_contact(&mut spec);
    spec
}
