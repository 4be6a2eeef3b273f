//! Helpers shared by the runtime's integration tests (each test file that needs
//! them declares `mod common;`).

// Each test crate uses a different part of this module.
#![allow(dead_code, clippy::unwrap_used)]

/// A TCP port free on loopback right now.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The lab's Python (`scripts/bootstrap` installs it into `/opt/loupe/venv`), or
/// `$LOUPE_VENV/bin/python`.
pub(crate) fn python() -> String {
    let venv = std::env::var("LOUPE_VENV").unwrap_or_else(|_| "/opt/loupe/venv".into());
    format!("{venv}/bin/python")
}

fn openssl(dir: &std::path::Path, args: &[&str]) {
    let status = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "openssl {args:?}");
}

/// A CA (`ca.pem`), a server certificate for `localhost` / 127.0.0.1
/// (`server.pem`, `server.key`) and a client certificate (`client.pem`,
/// `client.key`), made by `openssl` in `dir`.
pub(crate) fn make_pki(dir: &std::path::Path) {
    make_pki_for(dir, "DNS:localhost,IP:127.0.0.1");
}

/// [`make_pki`] with the server certificate's subject alternative names.
pub(crate) fn make_pki_for(dir: &std::path::Path, server_names: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "1",
            "-subj",
            "/CN=loupe-test-ca",
        ],
    );
    // Version 3 certificates (extensions) for both: webpki refuses version 1.
    std::fs::write(
        dir.join("server.ext"),
        format!("subjectAltName={server_names}\nextendedKeyUsage=serverAuth\n"),
    )
    .unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for name in ["server", "client"] {
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={name}"),
            ],
        );
        let csr = format!("{name}.csr");
        let pem = format!("{name}.pem");
        let mut args = vec![
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "1",
        ];
        let ext = format!("{name}.ext");
        args.extend(["-extfile", &ext]);
        openssl(dir, &args);
    }
}
