//! The deployment's private CA: certificates for the node, gates and admins, and the CRL.
//!
//! A gate certificate carries the URI `urn:stile:gate:<id>:provider:<p>` in its subject
//! alternative names, an admin certificate `urn:stile:admin:<name>`; the node reads a peer's
//! role from there and nowhere else. Files, in one directory (default `DATA/tls`): `ca.crt`,
//! `ca.key`, `node.crt`, `node.key`, `gate-<id>.crt`, `gate-<id>.key`, `admin-<name>.crt`,
//! `admin-<name>.key`, `crl.pem`. Keys are written 0600.

use std::io;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams,
    SanType, SerialNumber,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};
use time::{Duration, OffsetDateTime};

/// CA certificate file.
pub const CA_CERT: &str = "ca.crt";
/// CA key file.
pub const CA_KEY: &str = "ca.key";
/// Node certificate file.
pub const NODE_CERT: &str = "node.crt";
/// Node key file.
pub const NODE_KEY: &str = "node.key";
/// Revocation list file.
pub const CRL: &str = "crl.pem";
/// Longest admin name.
pub const ADMIN_NAME_MAX: usize = 64;
/// How long issued certificates are valid.
const VALIDITY_DAYS: i64 = 3650;
/// How long an [`Issuer`]'s gate certificates are valid: a load test's, for its run only,
/// whose files a killed run leaves behind and which a node of the same CA would accept.
const RUN_VALIDITY_DAYS: i64 = 7;

/// What a certificate lets its holder do.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Role {
    /// A gate: checks in its provider's tickets as gate `id`.
    Gate {
        /// Gate id (1-65535), recorded on the tickets it admits.
        id: u16,
        /// The provider whose tickets it may check in.
        provider: u16,
    },
    /// An admin (the gateway, an operator's CLI): mint, revoke, transfer, `checkin_as`,
    /// subscribe.
    Admin {
        /// Who, for the audit log.
        name: String,
    },
    /// A node of a shard, as a client of another: a standby following its primary
    /// (`replicate`), and nothing else.
    Node {
        /// The node's name in its cluster (`--name`).
        name: String,
    },
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Role::Gate { id, provider } => write!(f, "gate {id} of provider {provider}"),
            Role::Admin { name } => write!(f, "admin {name}"),
            Role::Node { name } => write!(f, "node {name}"),
        }
    }
}

/// A peer as its certificate names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Its role.
    pub role: Role,
    /// The certificate's serial number (raw DER integer bytes), to match the CRL.
    pub serial: Vec<u8>,
}

/// Why a certificate operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// A file holds something else than expected.
    #[error("{path}: {reason}")]
    Bad {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The CA exists already (init refuses to overwrite it).
    #[error("{0} exists already: this directory has a CA; issue certificates from it instead")]
    Exists(PathBuf),
    /// A certificate would overwrite another.
    #[error("{0} exists already; revoke it first if it is to be replaced, then remove it")]
    WouldOverwrite(PathBuf),
    /// An argument is out of range.
    #[error("{0}")]
    Invalid(String),
    /// rcgen refused.
    #[error("making the certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CertError + '_ {
    move |source| CertError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn bad(path: &Path, reason: impl Into<String>) -> CertError {
    CertError::Bad {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// The file name of gate `id`'s certificate (its key: `.key` instead of `.crt`).
pub fn gate_cert_name(id: u16) -> String {
    format!("gate-{id}.crt")
}

/// The file name of admin `name`'s certificate.
pub fn admin_cert_name(name: &str) -> String {
    format!("admin-{name}.crt")
}

/// The file name of node `name`'s certificate (server and client: a cluster's node).
pub fn node_cert_name(name: &str) -> String {
    format!("node-{name}.crt")
}

/// The key file beside a certificate file.
pub fn key_path_for(cert: &Path) -> PathBuf {
    cert.with_extension("key")
}

fn random_serial() -> SerialNumber {
    let mut b = [0u8; 16];
    getrandom::getrandom(&mut b).expect("the OS has randomness");
    // Positive and minimal as a DER integer, so the raw bytes read back as written.
    b[0] = (b[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&b)
}

fn base_params(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "stile");
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::days(1);
    params.not_after = now + Duration::days(VALIDITY_DAYS);
    params.serial_number = Some(random_serial());
    params
}

fn write_new(path: &Path, contents: &str, private: bool) -> Result<(), CertError> {
    if path.exists() {
        return Err(CertError::WouldOverwrite(path.to_path_buf()));
    }
    write_replace(path, contents, private)
}

/// Writes `contents` through a temporary file and a rename, so readers (the node watching
/// the CRL) never see half a file.
fn write_replace(path: &Path, contents: &str, private: bool) -> Result<(), CertError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    // The whole name and `.tmp`: `ca.key` and `ca.crt` must not share `ca.tmp`, or two
    // writers at once could put a certificate under a key's name, with a certificate's mode.
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let mode = if private { 0o600 } else { 0o644 };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    f.write_all(contents.as_bytes()).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

fn read_string(path: &Path) -> Result<String, CertError> {
    std::fs::read_to_string(path).map_err(io_err(path))
}

/// The CA, loaded to sign with.
struct Ca {
    /// The CA's certificate, re-signed from its parameters (same subject and key id).
    cert: Certificate,
    /// The CA's private key.
    key: KeyPair,
}

fn load_ca(dir: &Path) -> Result<Ca, CertError> {
    let key_path = dir.join(CA_KEY);
    let cert_path = dir.join(CA_CERT);
    if !cert_path.exists() {
        return Err(bad(
            &cert_path,
            "no CA here; run `stile certs init` first (or `stile up`, which makes a dev CA)",
        ));
    }
    let key = KeyPair::from_pem(&read_string(&key_path)?)
        .map_err(|e| bad(&key_path, format!("not a private key: {e}")))?;
    let params = CertificateParams::from_ca_cert_pem(&read_string(&cert_path)?)
        .map_err(|e| bad(&cert_path, format!("not a CA certificate: {e}")))?;
    // Re-signing the parsed parameters yields the same subject and key identifier: all a
    // signature by this CA needs.
    let cert = params.self_signed(&key)?;
    Ok(Ca { cert, key })
}

/// Makes a new CA and an empty CRL in `dir` (created 0700 if missing). Refuses if a CA is
/// there already.
pub fn init(dir: &Path) -> Result<(), CertError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io_err(dir))?;
    }
    let cert_path = dir.join(CA_CERT);
    if cert_path.exists() {
        return Err(CertError::Exists(cert_path));
    }
    let key = KeyPair::generate()?;
    let mut params = base_params("stile CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key)?;
    write_new(&dir.join(CA_KEY), &key.serialize_pem(), true)?;
    write_new(&cert_path, &cert.pem(), false)?;
    write_crl(dir, &Ca { cert, key }, Vec::new(), 1)
}

fn issue(
    dir: &Path,
    file: &str,
    params: CertificateParams,
    purpose: &[ExtendedKeyUsagePurpose],
) -> Result<PathBuf, CertError> {
    let ca = load_ca(dir)?;
    let cert_path = dir.join(file);
    let key_path = key_path_for(&cert_path);
    if cert_path.exists() || key_path.exists() {
        return Err(CertError::WouldOverwrite(cert_path));
    }
    let (key, cert) = ca.sign(params, purpose)?;
    write_new(&key_path, &key.serialize_pem(), true)?;
    write_new(&cert_path, &cert.pem(), false)?;
    Ok(cert_path)
}

impl Ca {
    /// A new key pair and its certificate, for `purpose`, signed by this CA.
    fn sign(
        &self,
        mut params: CertificateParams,
        purpose: &[ExtendedKeyUsagePurpose],
    ) -> Result<(KeyPair, Certificate), CertError> {
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = purpose.to_vec();
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        Ok((key, cert))
    }
}

/// Issues the node's server certificate for `names` (DNS names or IP addresses).
pub fn issue_node(dir: &Path, names: &[String]) -> Result<PathBuf, CertError> {
    issue_node_named(dir, names, None)
}

/// Issues a node certificate for `names`; with `name`, a cluster node's
/// (`node-NAME.crt`): a server certificate that also authenticates the node as a client
/// of the shard's other nodes, with the role `urn:stile:node:NAME`.
pub fn issue_node_named(
    dir: &Path,
    names: &[String],
    name: Option<&str>,
) -> Result<PathBuf, CertError> {
    if names.is_empty() {
        return Err(CertError::Invalid(
            "a node certificate needs at least one name (--san)".into(),
        ));
    }
    let mut params = base_params("stile node");
    for name in names {
        params.subject_alt_names.push(match name.parse() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) if is_dns_name(name) => SanType::DnsName(
                name.clone()
                    .try_into()
                    .map_err(|_| CertError::Invalid(format!("{name:?} is not a DNS name")))?,
            ),
            Err(_) => {
                return Err(CertError::Invalid(format!(
                    "{name:?} is neither an IP address nor a DNS name (letters, digits and \
                     hyphens in dot-separated labels of 1 to 63, at most 253 in all)"
                )))
            }
        });
    }
    let Some(name) = name else {
        return issue(
            dir,
            NODE_CERT,
            params,
            &[ExtendedKeyUsagePurpose::ServerAuth],
        );
    };
    if !valid_admin_name(name) {
        return Err(CertError::Invalid(format!(
            "node name {name:?}: use 1 to {ADMIN_NAME_MAX} letters, digits, '.', '_' or '-'"
        )));
    }
    params.subject_alt_names.push(SanType::URI(
        format!("urn:stile:node:{name}").try_into().expect("ASCII"),
    ));
    issue(
        dir,
        &node_cert_name(name),
        params,
        &[
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    )
}

/// Whether `name` is a host name a client can ask for (RFC 1123: labels of letters, digits
/// and inner hyphens, 1 to 63 bytes each, 253 in all), so that a typo does not make a
/// certificate that must be revoked before it can be issued again.
fn is_dns_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Issues gate `id`'s certificate for `provider`.
pub fn issue_gate(dir: &Path, id: u16, provider: u16) -> Result<PathBuf, CertError> {
    issue(
        dir,
        &gate_cert_name(id),
        gate_params(id, provider)?,
        &[ExtendedKeyUsagePurpose::ClientAuth],
    )
}

fn gate_params(id: u16, provider: u16) -> Result<CertificateParams, CertError> {
    if id == 0 {
        return Err(CertError::Invalid(
            "gate ids are 1 to 65535 (0 means an operator)".into(),
        ));
    }
    let mut params = base_params(&format!("stile gate {id} of provider {provider}"));
    params.subject_alt_names.push(SanType::URI(
        format!("urn:stile:gate:{id}:provider:{provider}")
            .try_into()
            .expect("ASCII"),
    ));
    Ok(params)
}

/// A CA loaded once to issue many short-lived gate certificates elsewhere than its own
/// directory: the load tester's gates, fresh each run, kept out of the deployment's `tls/`.
pub struct Issuer {
    /// The CA it signs with.
    ca: Ca,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Issuer")
    }
}

impl Issuer {
    /// The CA in `ca_dir`.
    pub fn open(ca_dir: &Path) -> Result<Issuer, CertError> {
        Ok(Issuer {
            ca: load_ca(ca_dir)?,
        })
    }

    /// Writes gate `id`'s certificate for `provider` and its key (0600) into `out_dir`, in
    /// place of any there: files for a run, not synced, valid for [`RUN_VALIDITY_DAYS`].
    pub fn gate(&self, out_dir: &Path, id: u16, provider: u16) -> Result<PathBuf, CertError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut params = gate_params(id, provider)?;
        params.not_after = OffsetDateTime::now_utc() + Duration::days(RUN_VALIDITY_DAYS);
        let (key, cert) = self
            .ca
            .sign(params, &[ExtendedKeyUsagePurpose::ClientAuth])?;
        let cert_path = out_dir.join(gate_cert_name(id));
        let key_path = key_path_for(&cert_path);
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&key_path)
            .and_then(|mut f| f.write_all(key.serialize_pem().as_bytes()))
            .map_err(io_err(&key_path))?;
        std::fs::write(&cert_path, cert.pem()).map_err(io_err(&cert_path))?;
        Ok(cert_path)
    }
}

/// Whether `name` may name an admin: 1 to [`ADMIN_NAME_MAX`] ASCII letters, digits, `.`,
/// `_` or `-`. The one rule for issuing and for accepting a certificate: a name goes into
/// audit lines and file names, so it holds no control character (a newline would forge an
/// audit line), no space and no path separator.
pub fn valid_admin_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= ADMIN_NAME_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Issues an admin certificate named `name` (letters, digits, `.`, `_`, `-`).
pub fn issue_admin(dir: &Path, name: &str) -> Result<PathBuf, CertError> {
    if !valid_admin_name(name) {
        return Err(CertError::Invalid(format!(
            "admin name {name:?}: use 1 to {ADMIN_NAME_MAX} letters, digits, '.', '_' or '-'"
        )));
    }
    let mut params = base_params(&format!("stile admin {name}"));
    params.subject_alt_names.push(SanType::URI(
        format!("urn:stile:admin:{name}").try_into().expect("ASCII"),
    ));
    issue(
        dir,
        &admin_cert_name(name),
        params,
        &[ExtendedKeyUsagePurpose::ClientAuth],
    )
}

/// A dev deployment in `dir`: a new CA, a node certificate for the loopback names
/// (`localhost`, `127.0.0.1`, `::1`), the admin `admin` and gate 1 of provider 1. What
/// `stile up` and a load test that spawns its node make when `dir` holds no CA.
pub fn make_dev(dir: &Path) -> Result<(), CertError> {
    init(dir)?;
    issue_node(dir, &["localhost".into(), "127.0.0.1".into(), "::1".into()])?;
    issue_admin(dir, "admin")?;
    issue_gate(dir, 1, 1)?;
    Ok(())
}

/// The serial numbers on the CRL in `dir`.
pub fn revoked_serials(dir: &Path) -> Result<Vec<Vec<u8>>, CertError> {
    Ok(read_crl(dir)?.0)
}

/// The CRL in `dir`: its revoked serial numbers and its CRL number.
fn read_crl(dir: &Path) -> Result<(Vec<Vec<u8>>, u64), CertError> {
    let path = dir.join(CRL);
    let der = CertificateRevocationListDer::from_pem_file(&path)
        .map_err(|e| bad(&path, format!("not a PEM CRL: {e}")))?;
    let (_, crl) = x509_parser::parse_x509_crl(der.as_ref())
        .map_err(|e| bad(&path, format!("CRL does not parse: {e}")))?;
    let serials = crl
        .iter_revoked_certificates()
        .map(|r| r.raw_serial().to_vec())
        .collect();
    let number = crl
        .crl_number()
        .and_then(|n| n.to_u64_digits().first().copied())
        .unwrap_or(1);
    Ok((serials, number))
}

fn write_crl(dir: &Path, ca: &Ca, serials: Vec<Vec<u8>>, number: u64) -> Result<(), CertError> {
    let now = OffsetDateTime::now_utc();
    let params = CertificateRevocationListParams {
        this_update: now,
        next_update: now + Duration::days(VALIDITY_DAYS),
        crl_number: SerialNumber::from(number),
        issuing_distribution_point: None,
        revoked_certs: serials
            .into_iter()
            .map(|s| RevokedCertParams {
                serial_number: SerialNumber::from_slice(&s),
                revocation_time: now,
                reason_code: None,
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    };
    let crl = params.signed_by(&ca.cert, &ca.key)?;
    write_replace(&dir.join(CRL), &crl.pem()?, false)
}

/// Puts the certificate in `cert_file` on the CRL in `dir`. A running node reloads the CRL,
/// refuses the certificate from its next handshake on and closes its live connections.
/// Returns the identity revoked.
pub fn revoke(dir: &Path, cert_file: &Path) -> Result<Identity, CertError> {
    let ca = load_ca(dir)?;
    let der = read_pem_cert(cert_file)?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| bad(cert_file, format!("certificate does not parse: {e}")))?;
    let ca_der = CertificateDer::from_pem_file(dir.join(CA_CERT))
        .map_err(|e| bad(&dir.join(CA_CERT), e.to_string()))?;
    let (_, ca_parsed) = x509_parser::parse_x509_certificate(ca_der.as_ref())
        .map_err(|e| bad(&dir.join(CA_CERT), e.to_string()))?;
    if cert.issuer().as_raw() != ca_parsed.subject().as_raw()
        || cert.verify_signature(Some(ca_parsed.public_key())).is_err()
    {
        return Err(bad(cert_file, "not issued by this directory's CA"));
    }
    if der.as_ref() == ca_der.as_ref() {
        return Err(bad(
            cert_file,
            "this is the CA itself, which a CRL cannot revoke: to replace it, make a new CA \
             (`stile certs init` in a new directory) and issue every certificate again",
        ));
    }
    // Only clients are checked against the CRL: revoking the node's own certificate would
    // do nothing, and saying it was done would mislead.
    let claims_role = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .is_some_and(|san| {
            san.value.general_names.iter().any(|name| {
                matches!(name, x509_parser::extensions::GeneralName::URI(uri) if is_role_uri(uri))
            })
        });
    let identity = identity_of(der.as_ref()).map_err(|reason| {
        if claims_role {
            // Two roles, or one that does not parse: every node refuses it at the handshake.
            return bad(
                cert_file,
                format!("{reason}: no node accepts it, so there is nothing to revoke"),
            );
        }
        bad(
            cert_file,
            "names no gate or admin role (a node's certificate?): only gate and admin \
             certificates are revoked; a node gets a new one with `stile certs issue-node`",
        )
    })?;
    let (mut serials, number) = read_crl(dir)?;
    if !serials.contains(&identity.serial) {
        serials.push(identity.serial.clone());
    }
    write_crl(dir, &ca, serials, number + 1)?;
    Ok(identity)
}

/// The admin name in the PEM certificate `path`; an error that names the role it carries
/// instead (a gate's), for tools that act as admin (the gateway, the load tester).
pub fn admin_name_of_file(path: &Path) -> Result<String, CertError> {
    match identity_of_file(path)?.role {
        Role::Admin { name } => Ok(name),
        role => Err(bad(
            path,
            format!("the certificate of {role}, where an admin's is needed"),
        )),
    }
}

/// The certificate in a PEM file, with an error that says whether the file is missing or
/// holds no certificate.
fn read_pem_cert(path: &Path) -> Result<CertificateDer<'static>, CertError> {
    if let Err(e) = std::fs::metadata(path) {
        return Err(bad(path, format!("cannot read it: {e}")));
    }
    CertificateDer::from_pem_file(path)
        .map_err(|e| bad(path, format!("not a PEM certificate: {e}")))
}

/// Reads the role out of a PEM certificate file.
pub fn identity_of_file(path: &Path) -> Result<Identity, CertError> {
    let der = read_pem_cert(path)?;
    identity_of(der.as_ref()).map_err(|reason| bad(path, reason))
}

/// The prefix of every stile role URI.
const ROLE_URI_PREFIX: &str = "urn:stile:";

/// Reads the role out of a (verified) peer certificate: the one `urn:stile:` URI among its
/// subject alternative names. A certificate with two (two roles, or one named twice) is
/// refused rather than taken by either, and so is one whose `urn:stile:` URI does not parse
/// (an admin name with a newline, say): what a certificate lets its holder do is never a
/// matter of which name comes first.
pub fn identity_of(der: &[u8]) -> Result<Identity, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("certificate does not parse: {e}"))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("bad subject alternative names: {e}"))?
        .ok_or("certificate has no subject alternative names")?;
    let mut uris = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) if is_role_uri(uri) => Some(*uri),
            _ => None,
        });
    let uri = uris
        .next()
        .ok_or("certificate names no stile role (urn:stile:gate:… or urn:stile:admin:…)")?;
    if uris.next().is_some() {
        return Err(
            "certificate names more than one stile role (urn:stile:…); a certificate carries \
             exactly one"
                .into(),
        );
    }
    let role = parse_role_uri(uri).ok_or_else(|| {
        format!(
            "certificate's stile role \"{}\" does not parse (urn:stile:gate:ID:provider:P, or \
             urn:stile:admin:NAME with 1 to {ADMIN_NAME_MAX} letters, digits, '.', '_' or '-')",
            uri.escape_debug().take(120).collect::<String>()
        )
    })?;
    Ok(Identity {
        role,
        serial: cert.raw_serial().to_vec(),
    })
}

/// Whether `uri` claims a stile role (starts `urn:stile:`, in any case), parsing or not.
fn is_role_uri(uri: &str) -> bool {
    uri.len() >= ROLE_URI_PREFIX.len()
        && uri.as_bytes()[..ROLE_URI_PREFIX.len()].eq_ignore_ascii_case(ROLE_URI_PREFIX.as_bytes())
}

fn parse_role_uri(uri: &str) -> Option<Role> {
    let rest = uri.strip_prefix(ROLE_URI_PREFIX)?;
    if let Some(name) = rest.strip_prefix("admin:") {
        return valid_admin_name(name).then(|| Role::Admin {
            name: name.to_string(),
        });
    }
    if let Some(name) = rest.strip_prefix("node:") {
        return valid_admin_name(name).then(|| Role::Node {
            name: name.to_string(),
        });
    }
    let rest = rest.strip_prefix("gate:")?;
    let (id, provider) = rest.split_once(":provider:")?;
    let id = decimal_u16(id)?;
    (id != 0).then_some(Role::Gate {
        id,
        provider: decimal_u16(provider)?,
    })
}

/// A u16 written in decimal digits only (no sign, no space).
fn decimal_u16(s: &str) -> Option<u16> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A name no client could ask for is refused before anything is written, so the
    /// certificate need not be revoked to correct it.
    #[test]
    fn node_names_must_be_addresses_or_host_names() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path()).unwrap();
        for bad in ["", "bad name!", "-x.example", "a..b", &"x".repeat(64)] {
            let err = issue_node(dir.path(), &[bad.to_string()]).unwrap_err();
            assert!(err.to_string().contains("DNS name"), "{bad:?}: {err}");
            assert!(!dir.path().join(NODE_CERT).exists(), "{bad:?}");
        }
        for good in [
            "node-1.example.org",
            "localhost",
            "::1",
            "10.0.0.7",
            "stadium.",
        ] {
            assert!(
                is_dns_name(good) || good.parse::<std::net::IpAddr>().is_ok(),
                "{good}"
            );
        }
        issue_node(dir.path(), &["node-1.example.org".into(), "::1".into()]).unwrap();
    }

    #[test]
    fn role_uris_parse_strictly() {
        assert_eq!(
            parse_role_uri("urn:stile:gate:7:provider:3"),
            Some(Role::Gate { id: 7, provider: 3 })
        );
        assert_eq!(
            parse_role_uri("urn:stile:admin:gateway"),
            Some(Role::Admin {
                name: "gateway".into()
            })
        );
        let long = format!("urn:stile:admin:{}", "a".repeat(ADMIN_NAME_MAX + 1));
        for bad in [
            "urn:stile:gate:0:provider:3",
            "urn:stile:gate:70000:provider:3",
            "urn:stile:gate:7",
            "urn:stile:gate:+7:provider:3",
            "urn:stile:gate:7:provider: 3",
            "urn:other:admin:x",
            "urn:stile:admin:",
            "urn:stile:admin:ops\nstile::audit: mint by admin root",
            "urn:stile:admin:ops\r",
            "urn:stile:admin:a\tb",
            "urn:stile:admin:a b",
            "urn:stile:admin:a\u{7f}",
            "urn:stile:admin:\u{202e}toor",
            &long,
        ] {
            assert_eq!(parse_role_uri(bad), None, "{bad:?}");
        }
    }

    /// A certificate of this CA whose subject alternative names are `uris`.
    fn cert_with_uris(ca: &Ca, uris: &[&str]) -> Certificate {
        let mut params = base_params("stile test");
        for uri in uris {
            params
                .subject_alt_names
                .push(SanType::URI((*uri).try_into().unwrap()));
        }
        let (_, cert) = ca
            .sign(params, &[ExtendedKeyUsagePurpose::ClientAuth])
            .unwrap();
        cert
    }

    /// A certificate naming two stile roles is refused rather than taken by the first; so is
    /// one whose admin name holds a control character (it would split an audit line), at
    /// issue time and when the node reads it.
    #[test]
    fn two_roles_or_an_admin_name_with_control_characters_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let tls = dir.path().join("tls");
        init(&tls).unwrap();
        let ca = load_ca(&tls).unwrap();
        let role = |uris: &[&str]| identity_of(cert_with_uris(&ca, uris).der()).map(|i| i.role);
        assert_eq!(
            role(&["https://gates.example", "urn:stile:gate:7:provider:3"]),
            Ok(Role::Gate { id: 7, provider: 3 })
        );
        for uris in [
            &["urn:stile:gate:7:provider:3", "urn:stile:admin:ops"][..],
            &["urn:stile:admin:ops", "urn:stile:gate:7:provider:3"],
            &["urn:stile:gate:7:provider:3", "urn:stile:gate:8:provider:3"],
            &["urn:stile:admin:ops", "urn:stile:admin:ops"],
            &["urn:stile:gate:7:provider:3", "URN:Stile:admin:ops"],
        ] {
            let why = role(uris).unwrap_err();
            assert!(why.contains("more than one stile role"), "{uris:?}: {why}");
        }
        for uri in [
            "urn:stile:admin:ops\nstile::audit: mint by admin root",
            "urn:stile:admin:ops\u{1b}[2K",
        ] {
            let why = role(&[uri]).unwrap_err();
            assert!(why.contains("does not parse"), "{uri:?}: {why}");
            assert!(!why.contains('\n') && !why.contains('\u{1b}'), "{why}");
        }
        // Revoking one says why it needs none, rather than taking it for a node's.
        let two = dir.path().join("two.crt");
        let cert = cert_with_uris(&ca, &["urn:stile:gate:7:provider:3", "urn:stile:admin:ops"]);
        std::fs::write(&two, cert.pem()).unwrap();
        let why = revoke(&tls, &two).unwrap_err().to_string();
        assert!(why.contains("nothing to revoke"), "{why}");
        assert!(revoked_serials(&tls).unwrap().is_empty());
        for name in ["ops\nroot", "ops\r", "a\tb", "a b", "\u{202e}toor", ""] {
            assert!(
                matches!(issue_admin(&tls, name), Err(CertError::Invalid(_))),
                "{name:?}"
            );
        }
    }

    /// An issuer's gate certificates are a run's: they expire within days, where those
    /// `stile certs` issues last years.
    #[test]
    fn an_issuers_gate_certificates_are_short_lived() {
        let dir = tempfile::tempdir().unwrap();
        let tls = dir.path().join("tls");
        init(&tls).unwrap();
        let out = dir.path().join("run");
        std::fs::create_dir(&out).unwrap();
        let not_after = |p: &Path| {
            let der = CertificateDer::from_pem_file(p).unwrap();
            let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
            cert.validity().not_after.timestamp()
        };
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let run = Issuer::open(&tls).unwrap().gate(&out, 3, 1).unwrap();
        let days = (not_after(&run) - now) / 86_400;
        assert!(
            (RUN_VALIDITY_DAYS - 1..=RUN_VALIDITY_DAYS).contains(&days),
            "{days} days"
        );
        let issued = issue_gate(&tls, 3, 1).unwrap();
        assert!((not_after(&issued) - now) / 86_400 >= VALIDITY_DAYS - 1);
        // Still a gate's certificate of the CA.
        let der = CertificateDer::from_pem_file(&run).unwrap();
        let id = identity_of(der.as_ref()).unwrap();
        assert_eq!(id.role, Role::Gate { id: 3, provider: 1 });
    }

    #[test]
    fn issued_certificates_carry_their_role_and_revocation_lists_them() {
        let dir = tempfile::tempdir().unwrap();
        let tls = dir.path().join("tls");
        init(&tls).unwrap();
        assert!(matches!(init(&tls), Err(CertError::Exists(_))));
        issue_node(&tls, &["localhost".into(), "127.0.0.1".into()]).unwrap();
        let gate = issue_gate(&tls, 4, 9).unwrap();
        let admin = issue_admin(&tls, "box-office").unwrap();
        assert!(issue_admin(&tls, "../x").is_err());
        assert!(matches!(
            issue_gate(&tls, 4, 9),
            Err(CertError::WouldOverwrite(_))
        ));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(key_path_for(&gate))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        let der = |p: &Path| CertificateDer::from_pem_file(p).unwrap();
        let g = identity_of(der(&gate).as_ref()).unwrap();
        assert_eq!(g.role, Role::Gate { id: 4, provider: 9 });
        let a = identity_of(der(&admin).as_ref()).unwrap();
        assert_eq!(
            a.role,
            Role::Admin {
                name: "box-office".into()
            }
        );
        assert!(identity_of(der(&tls.join(NODE_CERT)).as_ref()).is_err());
        // A cluster node's certificate names it, and serves as a client certificate too.
        let named = issue_node_named(&tls, &["127.0.0.1".into()], Some("n2")).unwrap();
        assert_eq!(named, tls.join(node_cert_name("n2")));
        assert_eq!(
            identity_of(der(&named).as_ref()).unwrap().role,
            Role::Node { name: "n2".into() }
        );
        assert!(issue_node_named(&tls, &["127.0.0.1".into()], Some("a/b")).is_err());

        assert!(revoked_serials(&tls).unwrap().is_empty());
        assert_eq!(revoke(&tls, &gate).unwrap(), g);
        assert_eq!(revoked_serials(&tls).unwrap(), vec![g.serial.clone()]);
        revoke(&tls, &admin).unwrap();
        revoke(&tls, &gate).unwrap();
        assert_eq!(revoked_serials(&tls).unwrap(), vec![g.serial, a.serial]);

        // A certificate of another CA cannot be put on this CRL.
        let other = dir.path().join("other");
        init(&other).unwrap();
        let foreign = issue_gate(&other, 4, 9).unwrap();
        assert!(revoke(&tls, &foreign).is_err());
        // Nor the CA itself, nor the node's certificate (the CRL checks clients only); the
        // CRL is left as it was.
        let ca = revoke(&tls, &tls.join(CA_CERT)).unwrap_err().to_string();
        assert!(ca.contains("the CA itself"), "{ca}");
        let node = revoke(&tls, &tls.join(NODE_CERT)).unwrap_err().to_string();
        assert!(node.contains("no gate or admin role"), "{node}");
        assert_eq!(revoked_serials(&tls).unwrap().len(), 2);
    }
}
