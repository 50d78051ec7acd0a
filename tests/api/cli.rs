//! The command line, run as a real process.

use crate::helpers::run_cli;

/// `shortener ARGS…` on `db_url`, without Redis.
fn shortener(db_url: &str, args: &[&str]) -> std::process::Output {
    run_cli(db_url, args, &[("REDIS_ENABLED", "false")])
}

#[test]
fn keys_can_be_created_listed_and_revoked() {
    let dir = tempfile::tempdir().unwrap();
    // On SQLite in a folder that does not exist yet: the first command creates it.
    let db = if crate::helpers::on_postgres() {
        crate::helpers::test_db_url(dir.path(), "k")
    } else {
        format!("sqlite://{}", dir.path().join("nested/dir/k.db").display())
    };

    let out = shortener(&db, &["keys", "create", "ci-bot"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let key = stdout.lines().last().unwrap();
    assert!(key.starts_with("sk_") && key.len() == 35, "{key:?}");

    let dup = shortener(&db, &["keys", "create", "ci-bot"]);
    assert!(!dup.status.success());
    assert!(String::from_utf8_lossy(&dup.stderr).contains("already exists"));

    let list = String::from_utf8(shortener(&db, &["keys", "list"]).stdout).unwrap();
    assert!(list.contains("ci-bot"));
    assert!(!list.contains(key), "keys list must never print a key");

    assert!(shortener(&db, &["keys", "revoke", "ci-bot"]).status.success());
    assert!(!shortener(&db, &["keys", "revoke", "ci-bot"]).status.success(), "revoking twice fails");
}

#[test]
fn migrate_creates_the_database_and_its_folder() {
    let dir = tempfile::tempdir().unwrap();
    if crate::helpers::on_postgres() {
        // PostgreSQL: the database exists (the operator made it); migrate makes the tables.
        let db = crate::helpers::test_db_url(dir.path(), "m");
        let out = shortener(&db, &["migrate"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let name = db.rsplit('/').next().unwrap();
        let tables = crate::pg::shared().psql(name, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'");
        assert_eq!(
            tables, "6",
            "link_mappings, api_keys, cache_invalidations, link_clicks_daily, admin_sessions, _sqlx_migrations"
        );
        let again = shortener(&db, &["migrate"]);
        assert!(again.status.success(), "migrating twice is a no-op: {}", String::from_utf8_lossy(&again.stderr));
        return;
    }
    let path = dir.path().join("a/b/links.db");
    let out = shortener(&format!("sqlite://{}", path.display()), &["migrate"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(path.exists());
}

#[test]
fn a_wrong_setting_stops_startup_naming_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let db = crate::helpers::test_db_url(dir.path(), "x");
    let out = run_cli(&db, &["serve"], &[("L1_CAPACITY", "lots")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("L1_CAPACITY"));
}

#[test]
fn import_reads_csv_and_reports_bad_lines() {
    let dir = tempfile::tempdir().unwrap();
    let db = crate::helpers::test_db_url(dir.path(), "i");
    let csv = dir.path().join("links.csv");
    std::fs::write(&csv, "code,url\nabc123,https://example.com/1\nbad code,https://example.com/2\nxyz789,ftp://nope\nq1w2e3,https://example.com/3\n").unwrap();
    let out = shortener(&db, &["links", "import", csv.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("imported 2 links"), "{stdout}");
    assert!(stdout.contains("2 rejected"), "{stdout}");
}
