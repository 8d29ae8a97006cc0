//! Fetching over ssh on loopback: a private `sshd` per test, a key pair and a
//! known_hosts line made with `ssh-keygen`.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command},
    time::{Duration, Instant},
};

use flotilla_hub::source::{Credentials, Error, RepoSpec};

use crate::support::source::{cache, fleet_repo};

const SSHD: &str = "/usr/sbin/sshd";

fn keygen(path: &Path) -> (String, String) {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "flotilla-test", "-f"])
        .arg(path)
        .status()
        .expect("ssh-keygen");
    assert!(status.success());
    let private = std::fs::read_to_string(path).expect("private key");
    let public = std::fs::read_to_string(path.with_extension("pub")).expect("public key");
    (private, public.trim().to_owned())
}

/// An sshd on loopback that lets in one key, for the current user.
struct Sshd {
    child: Child,
    port: u16,
    host_public_key: String,
    client_private_key: String,
    dir: tempfile::TempDir,
}

impl Sshd {
    fn start() -> Self {
        assert!(
            Path::new(SSHD).exists(),
            "{SSHD} is not installed (Debian package openssh-server; tests/install-prereqs installs it)"
        );
        // sshd insists on its privilege separation directory.
        let _ = std::fs::create_dir_all("/run/sshd");
        let dir = tempfile::tempdir().expect("tempdir");
        let (_, host_public_key) = keygen(&dir.path().join("host_key"));
        let (client_private_key, client_public_key) = keygen(&dir.path().join("client_key"));
        std::fs::write(
            dir.path().join("authorized_keys"),
            format!("{client_public_key}\n"),
        )
        .expect("authorized_keys");
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            probe.local_addr().expect("addr").port()
        };
        let user = whoami();
        let config = dir.path().join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {dir}/host_key\n\
                 AuthorizedKeysFile {dir}/authorized_keys\nPidFile {dir}/sshd.pid\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 PubkeyAuthentication yes\nPermitRootLogin prohibit-password\n\
                 StrictModes no\nUsePAM no\nAllowUsers {user}\nAcceptEnv GIT_PROTOCOL\n",
                dir = dir.path().display()
            ),
        )
        .expect("sshd_config");
        let child = Command::new(SSHD)
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("sshd.log")).expect("log"))
            .spawn()
            .expect("sshd starts");
        let sshd = Self {
            child,
            port,
            host_public_key,
            client_private_key,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "sshd did not listen: {}",
                sshd.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        sshd
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    fn known_hosts(&self) -> String {
        format!("[127.0.0.1]:{} {}\n", self.port, self.host_public_key)
    }

    fn url(&self, repo: &Path) -> String {
        format!(
            "ssh://{}@127.0.0.1:{}{}",
            whoami(),
            self.port,
            repo.display()
        )
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        // Our own child, by its pid.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn whoami() -> String {
    let out = Command::new("id").arg("-un").output().expect("id");
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

fn served_fleet() -> (tempfile::TempDir, PathBuf, crate::support::source::WorkRepo) {
    let work = fleet_repo();
    let root = tempfile::tempdir().expect("tempdir");
    let bare = work.bare_copy(root.path(), "fleet.git");
    (root, bare, work)
}

#[test]
fn ssh_with_a_private_key_and_known_hosts_fetches() {
    let sshd = Sshd::start();
    let (_root, bare, work) = served_fleet();
    let (_dir, cache) = cache();
    let spec = RepoSpec::with_credentials(
        sshd.url(&bare),
        Credentials::Ssh {
            private_key: sshd.client_private_key.clone(),
            known_hosts: Some(sshd.known_hosts()),
        },
    );
    let repo = cache
        .fetch(&spec)
        .unwrap_or_else(|e| panic!("fetch over ssh: {e:?}\nsshd: {}", sshd.log()));
    assert_eq!(repo.resolve("HEAD").expect("head").as_str(), work.head());
    let leftovers: Vec<_> = std::fs::read_dir(cache.root())
        .expect("ls")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "the key file is removed: {leftovers:?}");
}

#[test]
fn a_wrong_ssh_key_is_an_auth_error() {
    let sshd = Sshd::start();
    let (_root, bare, _work) = served_fleet();
    let (other, _) = keygen(&sshd.dir.path().join("stranger_key"));
    let (_dir, cache) = cache();
    let err = cache
        .fetch(&RepoSpec::with_credentials(
            sshd.url(&bare),
            Credentials::Ssh {
                private_key: other.clone(),
                known_hosts: Some(sshd.known_hosts()),
            },
        ))
        .expect_err("key not authorized");
    assert!(matches!(err, Error::Authentication { .. }), "{err:?}");
    assert!(!format!("{err:?}").contains(other.lines().nth(1).expect("key body")));
}

#[test]
fn an_unknown_ssh_host_key_is_refused() {
    let sshd = Sshd::start();
    let (_root, bare, _work) = served_fleet();
    let (_, impostor) = keygen(&sshd.dir.path().join("impostor_key"));
    let (_dir, cache) = cache();
    let err = cache
        .fetch(&RepoSpec::with_credentials(
            sshd.url(&bare),
            Credentials::Ssh {
                private_key: sshd.client_private_key.clone(),
                known_hosts: Some(format!("[127.0.0.1]:{} {impostor}\n", sshd.port)),
            },
        ))
        .expect_err("host key mismatch");
    // The key is fine; the server is not the one we know. That is no credential problem.
    assert!(matches!(err, Error::Fetch { .. }), "{err:?}");
}
