//! `GET /api/v1/openapi.json`: public, and covering exactly the routes the service has.

use std::collections::BTreeSet;

use reqwest::StatusCode;
use serde_json::Value;
use shortener::http::Surface;

use crate::helpers::spawn_app;

/// Paths that the document leaves out on purpose: the admin web app's pages are HTML for a
/// browser with a session cookie and CSRF tokens, not API.
fn excluded(path: &str) -> bool {
    path == "/admin" || path.starts_with("/admin/")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_has_every_route_of_the_service_and_no_other() {
    let app = spawn_app(None, |_| {}).await;
    let r = app.client.get(app.url("/api/v1/openapi.json")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "served without a key");
    assert_eq!(r.headers()["content-type"], "application/json");
    let doc: Value = r.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");

    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys().filter(|k| *k != "parameters") {
            documented.insert((method.to_uppercase(), path.clone()));
        }
    }
    let (undocumented, unserved) = compare(&Surface::new(app.state.clone()), &documented);
    assert!(undocumented.is_empty(), "routes missing from the OpenAPI document: {undocumented:?}");
    assert!(unserved.is_empty(), "documented operations the service does not have: {unserved:?}");

    // The check sees a route added to the table: it would fail for it.
    let extended =
        Surface::with_routes(app.state.clone(), |t| t.route("/stats", axum::routing::get(|| async { "stats" })));
    let (undocumented, _) = compare(&extended, &documented);
    assert_eq!(undocumented, [("GET".to_string(), "/stats".to_string())]);
}

/// (served but not documented, documented but not served).
type Pairs = Vec<(String, String)>;
fn compare(surface: &Surface, documented: &BTreeSet<(String, String)>) -> (Pairs, Pairs) {
    let all: BTreeSet<(String, String)> =
        surface.routes().iter().map(|(m, p)| (m.as_str().to_string(), p.clone())).collect();
    assert!(all.len() >= 15, "the route table records routes: {all:?}");
    let served: BTreeSet<(String, String)> = all
        .iter()
        .filter(|(_, p)| !excluded(p))
        // axum answers HEAD on every GET route; the document names HEAD only where it means
        // something of its own (the redirect).
        .filter(|(m, p)| !(m == "HEAD" && p != "/{code}" && all.contains(&("GET".to_string(), p.clone()))))
        .cloned()
        .collect();
    (served.difference(documented).cloned().collect(), documented.difference(&served).cloned().collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_says_which_calls_need_a_key_and_that_bodies_refuse_unknown_fields() {
    let app = spawn_app(None, |_| {}).await;
    let doc: Value = app.client.get(app.url("/api/v1/openapi.json")).send().await.unwrap().json().await.unwrap();
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let secured = op["security"][0].get("bearer").is_some();
            let api = path.starts_with("/api/v1/") && path != "/api/v1/openapi.json";
            assert_eq!(secured, api, "{method} {path}: security");
            if api {
                for status in ["400", "401", "403", "429", "503"] {
                    assert!(op["responses"].get(status).is_some(), "{method} {path} lacks {status}");
                }
                let retry = &op["responses"]["429"]["headers"]["Retry-After"];
                assert!(retry.is_object(), "{method} {path}: 429 without Retry-After");
            }
        }
    }
    for schema in ["CreateLink", "PatchLink"] {
        assert_eq!(doc["components"]["schemas"][schema]["additionalProperties"], false, "{schema}");
    }
    let redirect = &doc["paths"]["/{code}"];
    for status in ["301", "302", "307", "308"] {
        assert!(redirect["get"]["responses"][status]["headers"]["Location"].is_object(), "{status}");
    }
    assert!(redirect["head"]["responses"]["410"].is_object());
}
