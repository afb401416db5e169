//! Throwaway certificates for TLS tests, made at run time with rcgen: a CA, a server certificate
//! for `localhost` and 127.0.0.1, and client certificates (mTLS).

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// A PEM certificate and its PEM private key.
#[derive(Debug, Clone)]
pub struct Pem {
    /// The certificate.
    pub cert: String,
    /// Its private key.
    pub key: String,
}

/// A test certificate authority.
pub struct TestCa {
    /// The CA certificate (what a peer trusts).
    pub cert: String,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    /// A new CA named `name`.
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).expect("CA certificate").pem();
        TestCa {
            cert,
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate it issued for `names` (DNS names or IP addresses).
    pub fn issue(&self, names: &[&str]) -> Pem {
        let key = KeyPair::generate().expect("key");
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names.clone()).expect("params");
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("certificate")
            .pem();
        Pem {
            cert,
            key: key.serialize_pem(),
        }
    }
}
