//! The binary as an operator meets it: start-up mistakes give one line that says how to fix
//! them and a non-zero exit (with `RUST_BACKTRACE=1` set, never a backtrace), logs suit pipes
//! and log shippers, and the admin token is printed only when generated. (The load tool is a
//! program of its own, in replay-hub-bench; its tests are in bench/tests/loadtest.rs.)

use crate::common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};

use common::{free_port, KillOnDrop, PATIENCE};

fn binary() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_replay-hub"));
    command
        .env("RUST_BACKTRACE", "1")
        .env_remove("RUST_LOG")
        .env_remove("REPLAY_HUB_ADMIN_TOKEN")
        .env_remove("REPLAY_HUB_LOG_FORMAT")
        .stdin(Stdio::null());
    command
}

/// Runs the binary to completion (it must exit by itself) and returns what it printed.
fn run(args: &[&str]) -> Output {
    run_with_env(args, &[])
}

fn run_with_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let child = binary()
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    rx.recv_timeout(PATIENCE * 3)
        .expect("the binary exits by itself")
        .unwrap()
}

/// Asserts a failure whose stderr is exactly one line containing every piece of `expected`.
fn assert_one_line_error(output: &Output, expected: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "exit code: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line expected, got:\n{stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    for piece in expected {
        assert!(lines[0].contains(piece), "{piece:?} missing from: {stderr}");
    }
    assert!(
        !stderr.contains("backtrace") && !stderr.contains("Backtrace"),
        "{stderr}"
    );
    stderr
}

fn data_dir_with_race() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(common::race_file(), dir.path().join("test-race.race")).unwrap();
    dir
}

#[test]
fn a_port_in_use_is_named_before_any_race_loads() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let parent = tempfile::tempdir().unwrap();
    let data = parent.path().join("data");
    let output = run(&["--bind", &addr, "--data-dir", data.to_str().unwrap()]);
    assert_one_line_error(&output, &[&addr, "already in use", "--bind"]);
    assert!(
        !data.exists(),
        "nothing is scanned or generated before the port is bound"
    );
}

#[test]
fn bind_takes_a_bare_port_and_explains_the_expected_form() {
    let output = run(&["--bind", "80a"]);
    // clap's own usage error: its first line says what is expected, and it exits with 2.
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    let first = stderr.lines().next().unwrap_or_default();
    assert!(
        first.contains("--bind") && first.contains("HOST:PORT") && first.contains("bare port"),
        "{stderr}"
    );

    for form in [":{port}", "{port}", "localhost:{port}"] {
        let port = free_port();
        let bind = form.replace("{port}", &port.to_string());
        let dir = data_dir_with_race();
        let mut hub = KillOnDrop(
            binary()
                .args(["--bind", &bind, "--demo-session", ""])
                .arg("--data-dir")
                .arg(dir.path())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let stdout = hub.0.stdout.take().unwrap();
        let first = BufReader::new(stdout).lines().next().unwrap().unwrap();
        assert_eq!(
            first,
            format!("replay-hub listening on http://127.0.0.1:{port}"),
            "{bind}"
        );
    }
}

#[test]
fn a_data_dir_that_is_a_file_is_not_a_directory() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let output = run(&[
        "--bind",
        "127.0.0.1:0",
        "--data-dir",
        file.path().to_str().unwrap(),
    ]);
    assert_one_line_error(&output, &["not a directory", "--data-dir"]);
}

#[test]
fn import_into_an_unreachable_redis_says_so_and_gives_up() {
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}/0");
    let race = common::race_file().to_str().unwrap();
    let output = run(&["import", race, "--cache", &url, "--wait-ms", "1000"]);
    let stderr = assert_one_line_error(&output, &["import", &url, "does not answer", "--cache"]);
    assert!(!stderr.contains("serving from files"), "{stderr}");
}

/// Starts the binary with `args`, waits for its address, stops it, and returns its stdout
/// and stderr.
fn serve_briefly(args: &[&str], env: &[(&str, &str)]) -> (String, String) {
    let dir = data_dir_with_race();
    let mut command = binary();
    command
        .args(["--bind", "127.0.0.1:0", "--demo-session", ""])
        .arg("--data-dir")
        .arg(dir.path())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = KillOnDrop(command.spawn().unwrap());
    let stderr = child.0.stderr.take().unwrap();
    let errors = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap());
    let stdout = child.0.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut printed = String::new();
    loop {
        let line = lines.next().expect("the hub prints its banner").unwrap();
        printed.push_str(&line);
        printed.push('\n');
        if line.starts_with("admin token:") {
            break;
        }
    }
    drop(child);
    (printed, errors.join().unwrap())
}

#[test]
fn the_admin_token_is_printed_only_when_generated() {
    let (printed, _) = serve_briefly(&[], &[]);
    let token = printed
        .lines()
        .find_map(|l| l.strip_prefix("admin token: "))
        .unwrap();
    assert_eq!(token.len(), 32, "{printed}");
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()), "{printed}");

    let secret = "not-for-the-terminal";
    let (printed, _) = serve_briefly(&["--admin-token", secret], &[]);
    assert!(!printed.contains(secret), "{printed}");
    assert!(
        printed.contains("admin token: set from --admin-token / REPLAY_HUB_ADMIN_TOKEN"),
        "{printed}"
    );
    let (printed, _) = serve_briefly(&[], &[("REPLAY_HUB_ADMIN_TOKEN", secret)]);
    assert!(!printed.contains(secret), "{printed}");
}

#[test]
fn piped_logs_have_no_colour_codes_and_json_logs_parse() {
    let (_, text) = serve_briefly(&[], &[]);
    assert!(text.contains("INFO"), "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "escape codes in piped logs: {text:?}"
    );

    let (_, json) = serve_briefly(&["--log-format", "json"], &[]);
    let events: Vec<serde_json::Value> = json
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}")))
        .collect();
    assert!(!events.is_empty());
    for event in &events {
        assert!(
            event["level"].is_string() && event["fields"].is_object(),
            "{event}"
        );
    }
    let (_, env) = serve_briefly(&[], &[("REPLAY_HUB_LOG_FORMAT", "json")]);
    assert!(env.lines().all(|l| l.starts_with('{')), "{env}");
}

#[test]
fn an_empty_or_padded_admin_token_is_refused() {
    // Each would start a hub whose admin endpoints take `Authorization: Bearer ` (or no token
    // anyone can send): it must refuse to start instead.
    let bind = ["--bind", "127.0.0.1:0", "--cache", "none"];
    for (flag, env) in [(Some(""), None), (None, Some("")), (None, Some("   "))] {
        let mut args = bind.to_vec();
        if let Some(value) = flag {
            args.extend(["--admin-token", value]);
        }
        let env: Vec<(&str, &str)> = env
            .map(|v| ("REPLAY_HUB_ADMIN_TOKEN", v))
            .into_iter()
            .collect();
        let output = run_with_env(&args, &env);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{flag:?} {env:?}: {stderr}");
        assert!(stderr.contains("the admin token is empty"), "{stderr}");
    }
    let mut args = bind.to_vec();
    args.extend(["--admin-token", "secret\n"]);
    let output = run(&args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("whitespace"), "{stderr}");
}

#[test]
fn the_hub_ships_no_load_tool() {
    let output = run(&["--help"]);
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{help}");
    assert!(
        help.contains("generate") && help.contains("import"),
        "{help}"
    );
    assert!(!help.contains("loadtest"), "{help}");
    let output = run(&["loadtest", "--url", "ws://127.0.0.1:1/ws/sessions/demo"]);
    assert_eq!(output.status.code(), Some(2), "an unknown command");
}
