//! Why a private key cannot be used, in words a newcomer acts on.
//!
//! The PEM parser says only that the format is wrong (and its error names
//! its own types); the usual causes are the app's public key, a key still
//! under its passphrase, or a key of another kind. The armour label tells
//! them apart. Messages are fixed phrases: nothing of the key is echoed.

/// The message for a PEM the RSA parser refused.
pub(super) fn why_not_rsa_private(pem: &str) -> &'static str {
    let label = pem
        .lines()
        .find_map(|l| l.trim().strip_prefix("-----BEGIN "))
        .and_then(|l| l.strip_suffix("-----"))
        .unwrap_or("");
    let encrypted = label == "ENCRYPTED PRIVATE KEY" || pem.contains("Proc-Type: 4,ENCRYPTED");
    if encrypted {
        "this private key is encrypted with a passphrase; the proxy needs it unencrypted: \
         run `openssl pkey -in app.pem -out app-plain.pem` (it asks for the passphrase), \
         keep the new file mode 0600 and point private_key at it"
    } else if label.contains("PUBLIC KEY") {
        "this is a PUBLIC KEY; the app's private key is needed (the .pem file downloaded \
         when the app's private key was generated)"
    } else if label == "EC PRIVATE KEY"
        || (label == "PRIVATE KEY"
            && jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes()).is_ok())
    {
        "this is an EC key; AtomGit apps sign with RS256, so the app's RSA private key is needed"
    } else if label == "OPENSSH PRIVATE KEY" {
        "this is an OpenSSH key, not the app's private key; use the .pem file downloaded \
         when the app's private key was generated"
    } else if label.contains("CERTIFICATE") {
        "this is a certificate; the app's private key is needed"
    } else if label.is_empty() {
        "is not a PEM file; expected the app's RSA private key (PKCS#1 or PKCS#8)"
    } else {
        "expected an RSA private key in PEM (PKCS#1 or PKCS#8)"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_tell_the_usual_mistakes_apart() {
        let pem = |label: &str| format!("-----BEGIN {label}-----\nAAAA\n-----END {label}-----\n");
        assert!(why_not_rsa_private(&pem("PUBLIC KEY")).starts_with("this is a PUBLIC KEY"));
        assert!(why_not_rsa_private(&pem("RSA PUBLIC KEY")).starts_with("this is a PUBLIC KEY"));
        assert!(why_not_rsa_private(&pem("ENCRYPTED PRIVATE KEY")).contains("openssl pkey"));
        let legacy = "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nAAAA\n";
        assert!(why_not_rsa_private(legacy).contains("passphrase"));
        assert!(why_not_rsa_private(&pem("EC PRIVATE KEY")).contains("EC key"));
        assert!(why_not_rsa_private("secrets/app.pem").contains("not a PEM"));
    }
}
