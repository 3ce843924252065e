//! End-to-end tests of `fennec serve`: the real binary on a free localhost port,
//! answering the tiny colour model's predictions over HTTP, refusing the runtime's
//! bad-image corpus with 4xx JSON errors while it keeps serving, enforcing its
//! limits and its token, and stopping gracefully on SIGTERM.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fennec_e2e::http::{Client, multipart, request};
use fennec_e2e::*;
use serde_json::Value;

/// A running `fennec serve`, killed on drop.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn start(model: &Path, extra: &[&str]) -> Server {
        let mut child = Command::new(bin("fennec"))
            .arg("serve")
            .arg(model)
            .args(["--bind", "127.0.0.1:0", "--json"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start fennec serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let v: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("start line {line:?} is not JSON: {e}"));
        let url = v["listening"].as_str().expect("listening address");
        let addr = url.trim_start_matches("http://").parse().unwrap();
        Server { child, addr }
    }

    fn post(&self, path: &str, headers: &[&str], body: &[u8]) -> fennec_e2e::http::Answer {
        request(self.addr, "POST", path, headers, body)
    }

    fn get(&self, path: &str) -> fennec_e2e::http::Answer {
        request(self.addr, "GET", path, &[], &[])
    }

    /// The value of one sample line of /metrics (0 when absent).
    fn metric(&self, sample: &str) -> f64 {
        let text = self.get("/metrics").text();
        text.lines()
            .find_map(|l| l.strip_prefix(sample).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0.0)
    }

    /// Waits (bounded) until `sample` reaches `value`.
    fn wait_metric(&self, sample: &str, value: f64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.metric(sample) != value {
            assert!(Instant::now() < deadline, "{sample} never reached {value}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Asserts that the server still answers a good prediction.
    fn still_serving(&self, png: &[u8]) {
        let a = self.post("/v1/predict", &["Content-Type: image/png"], png);
        assert_eq!(a.status, 200, "{}", a.text());
        assert_eq!(a.json()["results"][0]["predictions"][0]["label"], "red");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A bad request and its expected answer: (what, headers, body, status, kind).
type BadCase<'a> = (&'a str, &'a [&'a str], Vec<u8>, u16, &'a str);

fn png_bytes(color: [u8; 3], dir: &Path, name: &str) -> Vec<u8> {
    let path = dir.join(name);
    save(&color_image(12, 9, color, 3), &path);
    std::fs::read(path).unwrap()
}

fn model(dir: &Path) -> PathBuf {
    color_model_file(dir, "m.onnx", &TinyModel::default())
}

#[test]
fn predicts_raw_and_multipart_bodies() {
    let d = tempdir();
    let server = Server::start(&model(d.path()), &[]);
    let red = png_bytes(RED, d.path(), "red.png");
    let green = png_bytes(GREEN, d.path(), "green.png");

    let a = server.post("/v1/predict?k=3", &["Content-Type: image/png"], &red);
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.header("content-type"), Some("application/json"));
    let preds = &a.json()["results"][0]["predictions"];
    assert_eq!(preds.as_array().unwrap().len(), 3, "{preds}");
    assert_eq!(preds[0]["label"], "red");
    let p: Vec<f64> = (0..3)
        .map(|i| preds[i]["probability"].as_f64().unwrap())
        .collect();
    assert!(p[0] >= p[1] && p[1] >= p[2], "{p:?}");
    assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-4, "{p:?}");

    // The same probabilities as `fennec predict`.
    let out = fennec!(
        "predict",
        model(d.path()),
        d.path().join("red.png"),
        "--json"
    )
    .ok();
    let local: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    let want = local["predictions"][0]["probability"].as_f64().unwrap();
    assert!((p[0] - want).abs() < 1e-6, "{} vs {want}", p[0]);

    // Several images in one multipart body, one of them bad: each has its result.
    let (ct, body) = multipart(&[
        ("a.png", &red),
        ("b.png", &green),
        ("c.jpg", b"not an image at all"),
    ]);
    let a = server.post("/v1/predict", &[&ct], &body);
    assert_eq!(a.status, 200, "{}", a.text());
    let r = &a.json()["results"];
    assert_eq!(r[0]["name"], "a.png");
    assert_eq!(r[0]["predictions"][0]["label"], "red");
    assert_eq!(r[1]["predictions"][0]["label"], "green");
    assert_eq!(r[2]["name"], "c.jpg");
    assert_eq!(r[2]["kind"], "not_an_image");

    // Many clients at once (batched together or not): each gets its own answer.
    let colors = [RED, GREEN, BLUE];
    let labels = ["red", "green", "blue"];
    let bodies: Vec<Vec<u8>> = colors
        .iter()
        .enumerate()
        .map(|(i, c)| png_bytes(*c, d.path(), &format!("c{i}.png")))
        .collect();
    std::thread::scope(|s| {
        for t in 0..6 {
            let body = &bodies[t % 3];
            let label = labels[t % 3];
            let addr = server.addr;
            s.spawn(move || {
                let mut c = Client::connect(addr).unwrap();
                for _ in 0..10 {
                    let a = c.send("POST", "/v1/predict", &[], body).unwrap();
                    assert_eq!(a.status, 200, "{}", a.text());
                    assert_eq!(a.json()["results"][0]["predictions"][0]["label"], label);
                }
            });
        }
    });
    assert_eq!(server.metric("fennec_images_scored_total"), 3.0 + 60.0);
}

#[test]
fn model_health_and_metrics_endpoints() {
    let d = tempdir();
    let m = model(d.path());
    let server = Server::start(&m, &[]);
    let info: Value = serde_json::from_str(&fennec!("info", m, "--json").ok()).unwrap();
    let a = server.get("/v1/model");
    assert_eq!(a.status, 200);
    assert_eq!(a.json(), info);
    assert_eq!(server.get("/healthz").json()["status"], "ok");

    let a = server.get("/nowhere");
    assert_eq!(a.status, 404);
    assert_eq!(a.json()["kind"], "not_found");
    let a = server.get("/v1/predict");
    assert_eq!(a.status, 405);
    assert_eq!(a.json()["kind"], "method_not_allowed");

    let red = png_bytes(RED, d.path(), "red.png");
    server.still_serving(&red);
    let metrics = server.get("/metrics");
    assert_eq!(metrics.status, 200);
    let text = metrics.text();
    for needle in [
        "fennec_http_requests_total{path=\"/v1/predict\",status=\"200\"} 1",
        "fennec_http_requests_total{path=\"other\",status=\"404\"} 1",
        "fennec_errors_total{kind=\"not_found\"} 1",
        "fennec_predict_duration_seconds_bucket",
        "fennec_images_scored_total 1",
        "fennec_requests_in_flight 0",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
}

#[test]
fn bad_images_get_4xx_json_and_the_server_keeps_serving() {
    let d = tempdir();
    let server = Server::start(&model(d.path()), &["--max-body", "1"]);
    let red = png_bytes(RED, d.path(), "red.png");
    let jpg_path = d.path().join("red.jpg");
    save(&color_image(40, 30, RED, 1), &jpg_path);
    let jpg = std::fs::read(&jpg_path).unwrap();
    let huge_path = d.path().join("huge.png");
    image::GrayImage::new(10_000, 10_000)
        .save(&huge_path)
        .unwrap();
    let huge = std::fs::read(&huge_path).unwrap();
    assert!(
        huge.len() < 1 << 20,
        "the huge PNG must pass the body limit"
    );

    // The runtime's bad-image corpus (as in runtime_cli's eval test), and more.
    let png = &["Content-Type: image/png"][..];
    // (what, headers, body, status, kind)
    let cases: Vec<BadCase> = vec![
        ("empty", png, vec![], 422, "empty"),
        (
            "text",
            png,
            b"this is not a jpeg".to_vec(),
            422,
            "not_an_image",
        ),
        (
            "truncated",
            png,
            jpg[..jpg.len() / 2].to_vec(),
            422,
            "truncated",
        ),
        ("huge", png, huge, 413, "too_large"),
        (
            "wrong type",
            &["Content-Type: text/plain"],
            red.clone(),
            415,
            "unsupported_media_type",
        ),
        ("bad k", png, red.clone(), 400, "bad_query"),
        (
            "bad multipart",
            &["Content-Type: multipart/form-data; boundary=x"],
            b"garbage".to_vec(),
            400,
            "bad_multipart",
        ),
    ];
    for (what, headers, body, status, kind) in cases {
        let path = if what == "bad k" {
            "/v1/predict?k=0"
        } else {
            "/v1/predict"
        };
        let a = server.post(path, headers, &body);
        assert_eq!(a.status, status, "{what}: {}", a.text());
        let v = a.json();
        assert_eq!(v["kind"], kind, "{what}: {v}");
        assert!(!v["error"].as_str().unwrap().is_empty(), "{what}: {v}");
        server.still_serving(&red);
    }
    // Over the body limit: refused from its Content-Length, before it is sent.
    let mut c = Client::connect(server.addr).unwrap();
    c.stream()
        .write_all(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 2097152\r\n\r\n")
        .unwrap();
    let a = c.read_answer().unwrap();
    assert_eq!(a.status, 413, "{}", a.text());
    assert_eq!(a.json()["kind"], "body_too_large");
    server.still_serving(&red);
    // Also when it comes in chunks without a length.
    let mut c = Client::connect(server.addr).unwrap();
    let chunk = vec![b'x'; 256 << 10];
    let mut answer = None;
    c.stream()
        .write_all(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    for _ in 0..5 {
        let sent = c
            .stream()
            .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .and_then(|()| c.stream().write_all(&chunk))
            .and_then(|()| c.stream().write_all(b"\r\n"));
        if sent.is_err() {
            break;
        }
    }
    if let Ok(a) = c.read_answer() {
        answer = Some(a);
    }
    if let Some(a) = answer {
        assert_eq!(a.status, 413, "{}", a.text());
        assert_eq!(a.json()["kind"], "body_too_large");
    }
    server.still_serving(&red);
    assert_eq!(
        server.metric("fennec_errors_total{kind=\"truncated\"}"),
        1.0
    );
    assert_eq!(
        server.metric("fennec_errors_total{kind=\"too_large\"}"),
        1.0
    );

    // A client that hangs up in the middle of its body costs nothing.
    let mut c = Client::connect(server.addr).unwrap();
    c.stream()
        .write_all(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\nabc")
        .unwrap();
    drop(c);
    // Nor does garbage instead of HTTP.
    let mut c = Client::connect(server.addr).unwrap();
    c.stream()
        .write_all(b"\x16\x03\x01 hello?\r\n\r\n")
        .unwrap();
    let _ = c.read_answer();
    server.still_serving(&red);
}

#[test]
fn limits_slow_clients_and_overload() {
    let d = tempdir();
    let red = png_bytes(RED, d.path(), "red.png");
    let server = Server::start(
        &model(d.path()),
        &[
            "--max-requests",
            "1",
            "--read-timeout",
            "1",
            "--header-timeout",
            "1",
        ],
    );
    // A slow client: headers, a bit of its body, then nothing.
    let mut slow = Client::connect(server.addr).unwrap();
    slow.stream()
        .write_all(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n0123")
        .unwrap();
    server.wait_metric("fennec_requests_in_flight", 1.0);
    // It holds the only slot: the next request is told to come back later.
    let a = server.post("/v1/predict", &[], &red);
    assert_eq!(a.status, 503, "{}", a.text());
    assert_eq!(a.header("retry-after"), Some("1"));
    assert_eq!(a.json()["kind"], "overloaded");
    // Then the read timeout cuts the slow one off, and the slot is free again.
    let a = slow.read_answer().unwrap();
    assert_eq!(a.status, 408, "{}", a.text());
    assert_eq!(a.json()["kind"], "read_timeout");
    server.still_serving(&red);

    // A client that never finishes its headers is disconnected.
    let mut c = Client::connect(server.addr).unwrap();
    c.stream()
        .write_all(b"POST /v1/predict HTTP/1.1\r\nHo")
        .unwrap();
    let mut rest = vec![];
    let _ = std::io::Read::read_to_end(c.stream(), &mut rest);
    server.still_serving(&red);
}

#[test]
fn token_guards_everything_but_health() {
    let d = tempdir();
    let token = d.path().join("token");
    std::fs::write(&token, "s3cret-token\n").unwrap();
    let red = png_bytes(RED, d.path(), "red.png");
    let server = Server::start(&model(d.path()), &["--token-file", token.to_str().unwrap()]);
    assert_eq!(server.get("/healthz").status, 200);
    for (headers, status) in [
        (&[][..], 401),
        (&["Authorization: Bearer wrong"][..], 401),
        (&["Authorization: Bearer s3cret-token"][..], 200),
    ] {
        let a = server.post("/v1/predict", headers, &red);
        assert_eq!(a.status, status, "{headers:?}: {}", a.text());
        if status == 401 {
            assert_eq!(a.json()["kind"], "unauthorized");
            assert_eq!(a.header("www-authenticate"), Some("Bearer"));
        }
    }
    assert_eq!(server.get("/metrics").status, 401);

    let empty = d.path().join("empty-token");
    std::fs::write(&empty, "\n").unwrap();
    fennec!(
        "serve",
        model(d.path()),
        "--bind",
        "127.0.0.1:0",
        "--token-file",
        empty
    )
    .fails(1, &["empty-token", "token file is empty"]);
}

#[test]
fn bad_bind_and_model_fail_with_one_line() {
    let d = tempdir();
    let m = model(d.path());
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    fennec!("serve", m, "--bind", addr).fails(1, &["cannot listen on", &addr]);
    fennec!("serve", d.path().join("nope.onnx")).fails(1, &["nope.onnx"]);
}

#[cfg(unix)]
#[test]
fn sigterm_finishes_requests_in_flight() {
    let d = tempdir();
    let red = png_bytes(RED, d.path(), "red.png");
    let mut server = Server::start(&model(d.path()), &[]);
    // A request in flight: headers and half its body sent.
    let mut c = Client::connect(server.addr).unwrap();
    let head = format!(
        "POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: {}\r\n\r\n",
        red.len()
    );
    c.stream().write_all(head.as_bytes()).unwrap();
    c.stream().write_all(&red[..red.len() / 2]).unwrap();
    server.wait_metric("fennec_requests_in_flight", 1.0);
    sigterm(server.child.id());
    // New connections are refused once the listener is closed.
    let deadline = Instant::now() + Duration::from_secs(30);
    while Client::connect(server.addr).is_ok() {
        assert!(Instant::now() < deadline, "still accepting after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The request in flight is still answered, then the server exits cleanly.
    c.stream().write_all(&red[red.len() / 2..]).unwrap();
    let a = c.read_answer().unwrap();
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json()["results"][0]["predictions"][0]["label"], "red");
    let status = server.child.wait().unwrap();
    assert!(status.success(), "exit {status:?}");
}
