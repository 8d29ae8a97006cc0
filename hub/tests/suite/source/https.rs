//! Fetching over https on loopback: `git http-backend` behind a TLS server written
//! here, with a private CA and HTTP Basic authentication.

use std::{convert::Infallible, path::PathBuf, sync::Arc};

use base64::Engine as _;
use bytes::Bytes;
use flotilla_hub::source::{Credentials, Error, RepoCache, RepoSpec};
use http_body_util::{BodyExt as _, Full};
use hyper::{Request, Response, StatusCode, body::Incoming};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt as _;

use crate::support::source::{cache, fleet_repo};

const USER: &str = "deploy-bot";
const TOKEN: &str = "glpat-very-secret-token-123";

fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A Git server for one test: bare repositories under `root`, served over https.
struct GitHttpsServer {
    base_url: String,
    ca_pem: String,
    /// Serves until the test drops it.
    _runtime: tokio::runtime::Runtime,
}

struct Served {
    root: PathBuf,
    basic: String,
}

impl GitHttpsServer {
    fn start(root: PathBuf) -> Self {
        install_crypto_provider();
        let ca_key = rcgen::KeyPair::generate().expect("ca key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "flotilla test CA");
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).expect("ca cert");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf_key = rcgen::KeyPair::generate().expect("leaf key");
        let mut leaf_params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .expect("leaf");
        leaf_params
            .extended_key_usages
            .push(rcgen::ExtendedKeyUsagePurpose::ServerAuth);
        leaf_params.use_authority_key_identifier_extension = true;
        let leaf = leaf_params
            .signed_by(&leaf_key, &issuer)
            .expect("leaf cert");

        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
            )
            .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let served = Arc::new(Served {
            root,
            basic: format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{TOKEN}"))
            ),
        });
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let served = Arc::clone(&served);
                tokio::spawn(async move {
                    // A client that refuses our certificate ends the handshake here.
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |request| {
                        handle(request, Arc::clone(&served))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Self {
            base_url: format!("https://127.0.0.1:{port}"),
            ca_pem: ca_cert.pem(),
            _runtime: runtime,
        }
    }
}

async fn handle(
    request: Request<Incoming>,
    served: Arc<Served>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let authorized = request
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .is_some_and(|value| value.as_bytes() == served.basic.as_bytes());
    if !authorized {
        return Ok(Response::builder()
            .status(StatusCode::UNAUTHORIZED)
            .header("WWW-Authenticate", "Basic realm=\"git\"")
            .body(Full::new(Bytes::from_static(b"authentication required\n")))
            .expect("response"));
    }
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let method = request.method().as_str().to_owned();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or_default().to_owned();
    let content_type = header("content-type");
    let git_protocol = header("git-protocol");
    let content_encoding = header("content-encoding");
    let body = request
        .into_body()
        .collect()
        .await
        .expect("request body")
        .to_bytes();

    let mut child = tokio::process::Command::new("git")
        .arg("http-backend")
        .env("GIT_PROJECT_ROOT", &served.root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("REQUEST_METHOD", method)
        .env("PATH_INFO", path)
        .env("QUERY_STRING", query)
        .env("CONTENT_TYPE", content_type)
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("HTTP_CONTENT_ENCODING", content_encoding)
        .env("GIT_PROTOCOL", git_protocol)
        .env("REMOTE_USER", USER)
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("git http-backend");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(&body).await.expect("cgi stdin");
    drop(stdin);
    let output = child.wait_with_output().await.expect("cgi output");

    // CGI output: headers, a blank line, the body.
    let out = output.stdout;
    let (head_end, body_start) = find_blank_line(&out).expect("cgi headers");
    let head = String::from_utf8_lossy(&out[..head_end]).into_owned();
    let mut response = Response::builder();
    for line in head.lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code: u16 = value
                .split_whitespace()
                .next()
                .and_then(|c| c.parse().ok())
                .expect("status code");
            response = response.status(code);
        } else {
            response = response.header(name.trim(), value);
        }
    }
    Ok(response
        .body(Full::new(Bytes::copy_from_slice(&out[body_start..])))
        .expect("response"))
}

fn find_blank_line(out: &[u8]) -> Option<(usize, usize)> {
    if let Some(i) = out.windows(4).position(|w| w == b"\r\n\r\n") {
        return Some((i, i + 4));
    }
    out.windows(2)
        .position(|w| w == b"\n\n")
        .map(|i| (i, i + 2))
}

fn served_fleet() -> (
    tempfile::TempDir,
    crate::support::source::WorkRepo,
    GitHttpsServer,
) {
    let work = fleet_repo();
    let root = tempfile::tempdir().expect("tempdir");
    work.bare_copy(root.path(), "fleet.git");
    let server = GitHttpsServer::start(root.path().to_owned());
    (root, work, server)
}

fn https_spec(server: &GitHttpsServer, token: &str) -> RepoSpec {
    RepoSpec::with_credentials(
        format!("{}/fleet.git", server.base_url),
        Credentials::Https {
            username: USER.into(),
            token: token.into(),
        },
    )
}

/// The error and every cause beneath it, as a user would see them.
fn full_report(err: &Error) -> String {
    let mut report = format!("{err} / {err:?}");
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        report.push_str(&format!(" / {cause} / {cause:?}"));
        source = cause.source();
    }
    report
}

#[test]
fn https_with_a_username_and_token_fetches_through_a_private_ca() {
    let (root, work, server) = served_fleet();
    let (_dir, cache) = cache();
    let cache: RepoCache = cache.trust_root_certificate_pem(server.ca_pem.clone());
    let spec = https_spec(&server, TOKEN);
    let repo = cache.fetch(&spec).expect("fetch over https");
    assert_eq!(repo.resolve("HEAD").expect("head").as_str(), work.head());
    assert_eq!(repo.url(), spec.url);

    // A new commit on the server arrives with the next fetch.
    work.write("apps/other/cm.yaml", "kind: ConfigMap\ndata: {}\n");
    let second = work.commit("second");
    work.git(&[
        "push",
        "-q",
        root.path().join("fleet.git").to_str().expect("utf-8"),
        "main",
    ]);
    let repo = cache.fetch(&spec).expect("second fetch");
    assert_eq!(repo.resolve("main").expect("main").as_str(), second);
}

#[test]
fn wrong_https_credentials_are_an_auth_error_and_never_echo_the_token() {
    let (_root, _work, server) = served_fleet();
    let (_dir, cache) = cache();
    let cache = cache.trust_root_certificate_pem(server.ca_pem.clone());
    let wrong = "wrong-token-that-must-not-leak";
    let err = cache
        .fetch(&https_spec(&server, wrong))
        .expect_err("wrong token");
    assert!(matches!(err, Error::Authentication { .. }), "{err:?}");
    let report = full_report(&err);
    assert!(!report.contains(wrong), "{report}");
    assert!(report.contains("127.0.0.1"), "names the repo: {report}");

    let err = cache
        .fetch(&RepoSpec::new(format!("{}/fleet.git", server.base_url)))
        .expect_err("no credentials");
    assert!(matches!(err, Error::Authentication { .. }), "{err:?}");
}

#[test]
fn an_https_server_with_an_untrusted_certificate_is_refused() {
    let (_root, _work, server) = served_fleet();
    let (_dir, cache) = cache();
    let err = cache
        .fetch(&https_spec(&server, TOKEN))
        .expect_err("our CA is not trusted");
    assert!(matches!(err, Error::Fetch { .. }), "{err:?}");
    assert!(!full_report(&err).contains(TOKEN));
}
