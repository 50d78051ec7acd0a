//! `GET /api/v1/links/{code}/qr`: QR code images of a link's short URL, read back by a real
//! decoder.

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::{
    helpers::{create_key, spawn_app, TestApp},
    qr_decode,
};

async fn qr(app: &TestApp, key: Option<&str>, path: &str) -> reqwest::Response {
    let mut req = app.client.request(Method::GET, app.url(&format!("/api/v1/links/{path}")));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    req.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_links_qr_code_decodes_to_its_short_url_as_svg_by_default_and_as_png() {
    let app = spawn_app(None, |_| {}).await;
    let link = app.create_code("qr-link", "https://example.com/a?b=c").await;
    let short_url = link["short_url"].as_str().unwrap();

    let svg = qr(&app, Some(&app.key), "qr-link/qr").await;
    assert_eq!(svg.status(), StatusCode::OK);
    assert_eq!(svg.headers()["content-type"], "image/svg+xml");
    let cache = svg.headers()["cache-control"].to_str().unwrap().to_string();
    assert!(cache.starts_with("private"), "{cache}");
    let body = svg.bytes().await.unwrap();
    assert!(std::str::from_utf8(&body).unwrap().contains(r#"width="256" height="256""#));
    assert_eq!(qr_decode::decode_svg(&body), short_url);

    let png = qr(&app, Some(&app.key), "qr-link/qr?format=png&size=300").await;
    assert_eq!(png.status(), StatusCode::OK);
    assert_eq!(png.headers()["content-type"], "image/png");
    assert!(png.headers()["cache-control"].to_str().unwrap().starts_with("private"));
    let body = png.bytes().await.unwrap();
    assert_eq!(qr_decode::png_dimensions(&body), (300, 300));
    assert_eq!(qr_decode::decode_png(&body), short_url);

    let svg = qr(&app, Some(&app.key), "qr-link/qr?format=SVG&size=2048").await;
    assert_eq!(svg.status(), StatusCode::OK);
    assert_eq!(qr_decode::decode_svg(&svg.bytes().await.unwrap()), short_url);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_format_or_size_is_a_422_in_the_apis_envelope() {
    let app = spawn_app(None, |_| {}).await;
    app.create_code("qr-bad", "https://example.com/").await;

    for (query, code) in [
        ("format=gif", "invalid_format"),
        ("format=", "invalid_format"),
        ("size=abc", "invalid_size"),
        ("size=", "invalid_size"),
        ("size=-1", "invalid_size"),
        ("size=63", "invalid_size"),
        ("size=2049", "invalid_size"),
        ("size=99999999999999999999", "invalid_size"),
        ("format=png&size=1.5", "invalid_size"),
    ] {
        let r = qr(&app, Some(&app.key), &format!("qr-bad/qr?{query}")).await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "{query}");
        assert_eq!(r.headers()["content-type"], "application/json", "{query}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{query}: {body}");
        assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{query}: {body}");
    }
    for size in ["64", "2048"] {
        let r = qr(&app, Some(&app.key), &format!("qr-bad/qr?format=png&size={size}")).await;
        assert_eq!(r.status(), StatusCode::OK, "size {size} is within the range");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_keys_link_has_no_qr_code_and_a_call_without_a_key_is_refused() {
    let app = spawn_app(None, |_| {}).await;
    let alice = create_key(&app.db_url, "alice", false).await;
    let bob = create_key(&app.db_url, "bob", false).await;
    let r = app
        .client
        .post(app.url("/api/v1/links"))
        .bearer_auth(&alice)
        .json(&serde_json::json!({"code": "alices-qr", "url": "https://example.com/alice"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);

    let theirs = qr(&app, Some(&bob), "alices-qr/qr").await;
    let (status, body) = (theirs.status(), theirs.text().await.unwrap());
    let missing = qr(&app, Some(&bob), "no-such-qr/qr").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!((status, body), (missing.status(), missing.text().await.unwrap()));

    assert_eq!(qr(&app, Some(&alice), "alices-qr/qr").await.status(), StatusCode::OK);
    assert_eq!(qr(&app, Some(&app.key), "alices-qr/qr").await.status(), StatusCode::OK, "an admin key sees it");

    let anonymous = qr(&app, None, "alices-qr/qr").await;
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(anonymous.headers()["www-authenticate"], "Bearer");
    let body: Value = anonymous.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
}
