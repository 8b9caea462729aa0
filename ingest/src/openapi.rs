//! The OpenAPI 3.1 document served at `/openapi.json`, built from the route table the
//! router uses, so a route cannot be served without being described.

use serde_json::{Value, json};

/// (method, path, summary, request body schema name or "").
pub const ROUTES: &[(&str, &str, &str, &str)] = &[
    (
        "put",
        "/v1/credit-types/{id}",
        "Create or replace a credit type and its unit price",
        "CreditType",
    ),
    (
        "put",
        "/v1/features/{id}",
        "Create or replace a metered feature",
        "Feature",
    ),
    (
        "put",
        "/v1/products/{id}",
        "Create or replace a product",
        "Product",
    ),
    (
        "put",
        "/v1/plans/{id}",
        "Create or replace a one-time plan",
        "Plan",
    ),
    (
        "put",
        "/v1/customers/{id}",
        "Create or update a customer",
        "Customer",
    ),
    (
        "post",
        "/v1/customers/{id}/subscriptions",
        "Subscribe to a plan: charge its price and grant its credits",
        "Subscription",
    ),
    (
        "post",
        "/v1/customers/{id}/grants",
        "Grant credits (idempotent by key)",
        "Grant",
    ),
    (
        "post",
        "/v1/customers/{id}/grants/{grant}/void",
        "Void what remains of a grant",
        "",
    ),
    (
        "put",
        "/v1/customers/{id}/auto-recharge",
        "Set auto-recharge for a credit type",
        "AutoRecharge",
    ),
    (
        "get",
        "/v1/customers/{id}/auto-recharge",
        "Auto-recharge settings and status",
        "",
    ),
    (
        "get",
        "/v1/customers/{id}/credits",
        "Balance, grants, auto-recharge and consumption",
        "",
    ),
    (
        "get",
        "/v1/customers/{id}/ledger",
        "Ledger entries, paged",
        "",
    ),
    (
        "get",
        "/v1/customers/{id}/recharges",
        "Recharge attempts",
        "",
    ),
    (
        "get",
        "/v1/customers/{id}/entitlements/{feature}",
        "May the customer use N units of a feature?",
        "",
    ),
    (
        "post",
        "/v1/events",
        "Report usage: one event or an array, JSON or CloudEvents",
        "Events",
    ),
];

/// The document.
pub fn document() -> Value {
    let mut paths = serde_json::Map::new();
    for (method, path, summary, body) in ROUTES {
        let mut operation = json!({
            "summary": summary,
            "security": [{"bearer": []}],
            "responses": {
                "200": {"description": "OK"},
                "400": {"$ref": "#/components/responses/Error"},
                "401": {"$ref": "#/components/responses/Error"},
                "404": {"$ref": "#/components/responses/Error"},
                "409": {"$ref": "#/components/responses/Error"},
                "503": {"$ref": "#/components/responses/Error"}
            }
        });
        if !body.is_empty() {
            operation["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": {"type": "object", "title": body}}}});
        }
        let parameters: Vec<Value> = path
            .split('/')
            .filter_map(|part| part.strip_prefix('{').and_then(|part| part.strip_suffix('}')))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        if !parameters.is_empty() {
            operation["parameters"] = Value::Array(parameters);
        }
        let entry = paths.entry((*path).to_owned()).or_insert_with(|| json!({}));
        entry[*method] = operation;
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Refill", "version": env!("CARGO_PKG_VERSION"), "description": "Prepaid usage credits with auto-recharge."},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "responses": {"Error": {"description": "An error", "content": {"application/json": {"schema": {
                "type": "object",
                "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {
                    "code": {"type": "string"}, "message": {"type": "string"}, "field": {"type": "string"}
                }}}
            }}}}}
        }
    })
}
