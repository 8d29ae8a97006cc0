//! Chart repositories for tests, all on loopback: a certificate authority the test
//! makes, an HTTPS static file server with Basic authentication (and, when asked,
//! client certificates) over a folder that `helm repo index` wrote, a real OCI
//! registry (distribution's `registry`, which `tests/build-k8s` builds), and
//! charts written and packaged with the real `helm`.
//!
//! Shared with the end-to-end tests, which compile this file too.

// Test helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used, dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A certificate authority made for one test, with a server certificate for
/// 127.0.0.1 and a client certificate it signed.
pub struct TestCa {
    /// The CA certificate, PEM: what the hub is told to trust.
    pub pem: String,
    /// The server's certificate and key, PEM.
    pub server_cert: String,
    pub server_key: String,
    /// A client certificate and key the CA signed, PEM (`tlsClientCertData`, `tlsClientCertKey`).
    pub client_cert: String,
    pub client_key: String,
}

impl TestCa {
    pub fn new() -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "flotilla chart test CA");
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);

        let server_key = rcgen::KeyPair::generate().unwrap();
        let mut server =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .unwrap();
        server
            .extended_key_usages
            .push(rcgen::ExtendedKeyUsagePurpose::ServerAuth);
        server.use_authority_key_identifier_extension = true;
        let server_cert = server.signed_by(&server_key, &issuer).unwrap();

        let client_key = rcgen::KeyPair::generate().unwrap();
        let mut client = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        client
            .distinguished_name
            .push(rcgen::DnType::CommonName, "flotilla hub");
        client
            .extended_key_usages
            .push(rcgen::ExtendedKeyUsagePurpose::ClientAuth);
        client.use_authority_key_identifier_extension = true;
        let client_cert = client.signed_by(&client_key, &issuer).unwrap();

        Self {
            pem: ca_cert.pem(),
            server_cert: server_cert.pem(),
            server_key: server_key.serialize_pem(),
            client_cert: client_cert.pem(),
            client_key: client_key.serialize_pem(),
        }
    }

    fn server_config(&self, require_client_cert: bool) -> rustls::ServerConfig {
        use rustls::pki_types::pem::PemObject as _;
        let chain = vec![
            rustls::pki_types::CertificateDer::from_pem_slice(self.server_cert.as_bytes()).unwrap(),
        ];
        let key =
            rustls::pki_types::PrivateKeyDer::from_pem_slice(self.server_key.as_bytes()).unwrap();
        let builder = rustls::ServerConfig::builder();
        let builder = if require_client_cert {
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(
                    rustls::pki_types::CertificateDer::from_pem_slice(self.pem.as_bytes()).unwrap(),
                )
                .unwrap();
            builder.with_client_cert_verifier(
                rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
                    .build()
                    .unwrap(),
            )
        } else {
            builder.with_no_client_auth()
        };
        builder.with_single_cert(chain, key).unwrap()
    }

    /// Writes the CA, server certificate and key into `dir`, for programs that
    /// read files (the registry, helm).
    pub fn write_files(&self, dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
        let ca = dir.join("ca.pem");
        let cert = dir.join("server.pem");
        let key = dir.join("server.key");
        std::fs::write(&ca, &self.pem).unwrap();
        std::fs::write(&cert, &self.server_cert).unwrap();
        std::fs::write(&key, &self.server_key).unwrap();
        (ca, cert, key)
    }
}

/// A Helm chart repository: the files of a folder over HTTPS, behind Basic
/// authentication, on its own runtime so it serves whatever the test blocks on.
pub struct ChartRepoServer {
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    /// The folder served.
    pub dir: PathBuf,
    /// Requests answered, for tests that count fetches.
    pub requests: Arc<AtomicU64>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for ChartRepoServer {
    fn drop(&mut self) {
        // Dropped from async tests too, where a runtime may not block to stop.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl ChartRepoServer {
    /// Serves `dir`; with `basic`, only to requests carrying those credentials;
    /// with `require_client_cert`, only to clients with a certificate from `ca`.
    pub fn start(
        ca: &TestCa,
        dir: PathBuf,
        basic: Option<(&str, &str)>,
        require_client_cert: bool,
    ) -> Self {
        let acceptor =
            tokio_rustls::TlsAcceptor::from(Arc::new(ca.server_config(require_client_cert)));
        let expected = basic.map(|(u, p)| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            )
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(AtomicU64::new(0));
        let counter = requests.clone();
        let root = dir.clone();
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let root = root.clone();
                let expected = expected.clone();
                let counter = counter.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut request = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 65536 {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    counter.fetch_add(1, Ordering::Relaxed);
                    let text = String::from_utf8_lossy(&request).into_owned();
                    let path = text.split_whitespace().nth(1).unwrap_or("/").to_owned();
                    let authorized = expected.as_ref().is_none_or(|want| {
                        text.lines().any(|line| {
                            line.split_once(':').is_some_and(|(name, value)| {
                                name.eq_ignore_ascii_case("authorization") && value.trim() == want
                            })
                        })
                    });
                    let file = path.split('?').next().unwrap_or("").trim_start_matches('/');
                    let (status, body) = if !authorized {
                        ("401 Unauthorized", b"authentication required\n".to_vec())
                    } else if file.contains("..") {
                        ("404 Not Found", Vec::new())
                    } else {
                        match std::fs::read(root.join(file)) {
                            Ok(body) => ("200 OK", body),
                            Err(_) => ("404 Not Found", Vec::new()),
                        }
                    };
                    let head = format!(
                        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nWWW-Authenticate: Basic realm=\"charts\"\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = tls.write_all(head.as_bytes()).await;
                    let _ = tls.write_all(&body).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        Self {
            url: format!("https://127.0.0.1:{port}"),
            dir,
            requests,
            runtime: Some(runtime),
        }
    }
}

/// Runs `helm` (from PATH or FLOTILLA_HELM, the binary the hub renders with) in
/// `dir` with its homes inside `home`, and returns stdout.
pub fn helm(args: &[&str], dir: &Path, home: &Path) -> String {
    let program = std::env::var_os("FLOTILLA_HELM").unwrap_or_else(|| "helm".into());
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "helm {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Writes chart `name` at `version` into `src/name`: a ConfigMap naming the chart
/// version and the value `retention`, and `extra_chart_yaml` appended to
/// Chart.yaml (dependencies, say). Returns the chart's folder.
pub fn write_chart(src: &Path, name: &str, version: &str, extra_chart_yaml: &str) -> PathBuf {
    let dir = src.join(name);
    std::fs::create_dir_all(dir.join("templates")).unwrap();
    std::fs::write(
        dir.join("Chart.yaml"),
        format!("apiVersion: v2\nname: {name}\nversion: {version}\n{extra_chart_yaml}"),
    )
    .unwrap();
    std::fs::write(dir.join("values.yaml"), "retention: 1d\n").unwrap();
    std::fs::write(
        dir.join("templates/config.yaml"),
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{{{ .Release.Name }}}}-{name}\ndata:\n  chartVersion: {{{{ .Chart.Version | quote }}}}\n  retention: {{{{ .Values.retention | quote }}}}\n"
        ),
    )
    .unwrap();
    dir
}

/// Packages chart `name` at `version` into the repository folder `repo` and
/// indexes it again, as a chart repository's publisher does.
pub fn publish(repo: &Path, name: &str, version: &str, extra_chart_yaml: &str) {
    let src = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let chart = write_chart(src.path(), name, version, extra_chart_yaml);
    helm(
        &[
            "package",
            chart.to_str().unwrap(),
            "--destination",
            repo.to_str().unwrap(),
        ],
        src.path(),
        home.path(),
    );
    helm(&["repo", "index", "."], repo, home.path());
}

/// An Argo CD repository Secret (or, with `secret_type: repo-creds`, a
/// credential template) as YAML, with `fields` as stringData.
pub fn argocd_secret(name: &str, secret_type: &str, fields: &[(&str, &str)]) -> String {
    let mut yaml = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: argocd\n  labels:\n    argocd.argoproj.io/secret-type: {secret_type}\nstringData:\n"
    );
    for (key, value) in fields {
        yaml.push_str(&format!(
            "  {key}: {}\n",
            serde_json::Value::String((*value).to_owned())
        ));
    }
    yaml
}

/// distribution's OCI registry on loopback, over TLS from a [`TestCa`], with
/// htpasswd (bcrypt) Basic authentication; stopped when dropped.
pub struct Registry {
    /// `127.0.0.1:PORT`.
    pub host: String,
    /// The CA file helm is told to trust for pushes.
    pub ca_file: PathBuf,
    /// helm's registry login, for pushes.
    registry_config: PathBuf,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Registry {
    /// Starts `registry` (from the folder `tests/build-k8s` fills) and waits until
    /// it answers.
    pub async fn start(ca: &TestCa, user: &str, password: &str) -> Self {
        let binary = flotilla_tests::tool("registry").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (ca_file, cert, key) = ca.write_files(dir.path());
        let htpasswd = dir.path().join("htpasswd");
        std::fs::write(
            &htpasswd,
            format!("{user}:{}\n", bcrypt::hash(password, 5).unwrap()),
        )
        .unwrap();
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let host = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {host}\n  tls:\n    certificate: {}\n    key: {}\nauth:\n  htpasswd:\n    realm: charts\n    path: {}\n",
                dir.path().join("data").display(),
                cert.display(),
                key.display(),
                htpasswd.display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new(binary)
            .arg("serve")
            .arg(&config)
            .env_clear()
            .env("OTEL_SDK_DISABLED", "true")
            .env("OTEL_TRACES_EXPORTER", "none")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let registry_config = dir.path().join("registry-config.json");
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        std::fs::write(
            &registry_config,
            serde_json::json!({ "auths": { host.clone(): { "auth": auth } } }).to_string(),
        )
        .unwrap();
        let registry = Self {
            host,
            ca_file,
            registry_config,
            child,
            _dir: dir,
        };
        registry.wait_until_up().await;
        registry
    }

    async fn wait_until_up(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            if tokio::net::TcpStream::connect(&self.host).await.is_ok() {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the registry did not listen on {} within 30 s",
                self.host
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// Packages chart `name` at `version` and pushes it to `oci://HOST/path`.
    pub fn push(&self, path: &str, name: &str, version: &str) {
        let src = tempfile::tempdir().unwrap();
        let home = tempfile::tempdir().unwrap();
        let chart = write_chart(src.path(), name, version, "");
        helm(
            &["package", chart.to_str().unwrap(), "--destination", "."],
            src.path(),
            home.path(),
        );
        let program = std::env::var_os("FLOTILLA_HELM").unwrap_or_else(|| "helm".into());
        let out = Command::new(program)
            .args([
                "push",
                &format!("{name}-{version}.tgz"),
                &format!("oci://{}/{path}", self.host),
                "--ca-file",
                self.ca_file.to_str().unwrap(),
            ])
            .current_dir(src.path())
            .env("HELM_CACHE_HOME", home.path().join("cache"))
            .env("HELM_CONFIG_HOME", home.path().join("config"))
            .env("HELM_DATA_HOME", home.path().join("data"))
            .env("HELM_REGISTRY_CONFIG", &self.registry_config)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "helm push: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
