//! TLS settings for the fetcher, mirroring what the httpx client is given:
//! system roots plus an optional extra CA bundle, optional client cert.

use std::fs;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use ureq::tls::{parse_pem, Certificate, ClientCert, PemItem, PrivateKey, RootCerts, TlsConfig};

use crate::error::{CoreError, Result};

pub struct TlsOptions<'a> {
    pub ca_file: Option<&'a Path>,
    pub client_cert: Option<&'a Path>,
    pub client_key: Option<&'a Path>,
    pub insecure: bool,
}

pub fn tls_config(opts: &TlsOptions<'_>) -> Result<TlsConfig> {
    let mut builder = TlsConfig::builder()
        .root_certs(root_certs(opts.ca_file)?)
        .disable_verification(opts.insecure);
    if let Some(cert) = opts.client_cert {
        builder = builder.client_cert(Some(client_cert(cert, opts.client_key)?));
    } else if opts.client_key.is_some() {
        return Err(CoreError::Invalid(
            "client_key given without client_cert".into(),
        ));
    }
    Ok(builder.build())
}

/// System roots (the OS bundle, as curl and httpx's certifi-less setups use)
/// plus `ca_file`. Falls back to the bundled Mozilla roots only when the
/// system has none, so an extra CA never silently replaces the public roots.
fn root_certs(ca_file: Option<&Path>) -> Result<RootCerts> {
    let system = system_roots();
    let Some(path) = ca_file else {
        // Shared by every Fetcher: a bulk pull may have one per registry host.
        return Ok(if system.is_empty() {
            RootCerts::WebPki
        } else {
            RootCerts::Specific(Arc::clone(system))
        });
    };
    let (extra, _) = read_pem(path)?;
    if extra.is_empty() {
        return Err(CoreError::Invalid(format!(
            "CA file {}: no PEM certificate in it",
            path.display()
        )));
    }
    if system.is_empty() {
        // No system roots to add to: trust only what was given.
        return Ok(RootCerts::Specific(Arc::new(extra)));
    }
    let mut certs: Vec<Certificate<'static>> = system.as_ref().clone();
    certs.extend(extra);
    Ok(RootCerts::Specific(Arc::new(certs)))
}

/// The system's roots, read once per process (~140 certificates).
fn system_roots() -> &'static Arc<Vec<Certificate<'static>>> {
    static ROOTS: OnceLock<Arc<Vec<Certificate<'static>>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let native = rustls_native_certs::load_native_certs().certs;
        Arc::new(
            native
                .iter()
                .map(|c| Certificate::from_der(c.as_ref()).to_owned())
                .collect(),
        )
    })
}

/// The key may live in `key_file` or in the certificate file itself.
fn client_cert(cert_file: &Path, key_file: Option<&Path>) -> Result<ClientCert> {
    let (chain, key) = read_pem(cert_file)?;
    if chain.is_empty() {
        return Err(CoreError::Invalid(format!(
            "client certificate {}: no PEM certificate in it",
            cert_file.display()
        )));
    }
    let key = match key_file {
        Some(path) => read_pem(path)?.1,
        None => key,
    };
    let key = key.ok_or_else(|| {
        let path = key_file.unwrap_or(cert_file);
        CoreError::Invalid(format!(
            "client key {}: no PEM private key in it",
            path.display()
        ))
    })?;
    Ok(ClientCert::new_with_certs(&chain, key))
}

/// Certificates and the first private key of a PEM file.
fn read_pem(path: &Path) -> Result<(Vec<Certificate<'static>>, Option<PrivateKey<'static>>)> {
    let pem = fs::read(path).map_err(|e| CoreError::file("read", path, e))?;
    let mut certs = Vec::new();
    let mut key = None;
    for item in parse_pem(&pem) {
        match item {
            Ok(PemItem::Certificate(c)) => certs.push(c),
            Ok(PemItem::PrivateKey(k)) if key.is_none() => key = Some(k),
            Ok(_) => {}
            Err(e) => {
                return Err(CoreError::Invalid(format!(
                    "{}: bad PEM: {e}",
                    path.display()
                )))
            }
        }
    }
    Ok((certs, key))
}
