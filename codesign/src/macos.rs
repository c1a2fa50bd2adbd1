//! A file's code signature on macOS, read with `SecStaticCode`: whether it is valid and
//! satisfies `anchor apple generic`, its signing identifier and team, and its embedded
//! Info.plist — the facts [`crate::check`] judges. Type-checked for `aarch64-apple-darwin`
//! by `.ci/apple-check`; never run here (the README says so).

use std::path::Path;

use core_foundation::base::{CFType, TCFType};
use core_foundation::dictionary::{CFDictionary, CFDictionaryRef};
use core_foundation::string::{CFString, CFStringRef};
use core_foundation::url::CFURL;
use security_framework::os::macos::code_signing::{Flags, SecRequirement, SecStaticCode};
use security_framework_sys::code_signing::SecStaticCodeRef;

use crate::{InfoPlist, SigningInfo};

/// `kSecCSSigningInformation`: include the certificate-derived fields (the team).
const SIGNING_INFORMATION: u32 = 1 << 1;

#[link(name = "Security", kind = "framework")]
unsafe extern "C" {
    fn SecCodeCopySigningInformation(
        code: SecStaticCodeRef,
        flags: u32,
        information: *mut CFDictionaryRef,
    ) -> i32;
    static kSecCodeInfoIdentifier: CFStringRef;
    static kSecCodeInfoTeamIdentifier: CFStringRef;
    static kSecCodeInfoPList: CFStringRef;
}

/// What Security.framework says about the signature of the file at `path`. A file it cannot
/// read at all gives the default (`valid: None`: "code signature unreadable").
pub fn signing_info(path: &Path) -> SigningInfo {
    let Some(url) = CFURL::from_path(path, false) else {
        return SigningInfo::default();
    };
    let Ok(code) = SecStaticCode::from_path(&url, Flags::NONE) else {
        return SigningInfo::default();
    };
    let valid = match "anchor apple generic".parse::<SecRequirement>() {
        Ok(requirement) => code
            .check_validity(Flags::NONE, &requirement)
            .map_err(|e| e.to_string()),
        Err(e) => Err(format!("the requirement does not parse: {e}")),
    };
    let mut info = SigningInfo {
        valid: Some(valid),
        ..SigningInfo::default()
    };
    let mut raw: CFDictionaryRef = std::ptr::null();
    // SAFETY: `code` is a live SecStaticCode; on success `raw` is a dictionary we own (the
    // create rule), wrapped at once so it is released.
    let status = unsafe {
        SecCodeCopySigningInformation(code.as_concrete_TypeRef(), SIGNING_INFORMATION, &mut raw)
    };
    if status != 0 || raw.is_null() {
        return info;
    }
    // SAFETY: see above.
    let dict: CFDictionary<CFString, CFType> = unsafe { CFDictionary::wrap_under_create_rule(raw) };
    // SAFETY: Security.framework's key constants live as long as the process.
    let (identifier, team, plist) = unsafe {
        (
            CFString::wrap_under_get_rule(kSecCodeInfoIdentifier),
            CFString::wrap_under_get_rule(kSecCodeInfoTeamIdentifier),
            CFString::wrap_under_get_rule(kSecCodeInfoPList),
        )
    };
    info.identifier = string(&dict, &identifier);
    info.team = string(&dict, &team);
    info.info_plist = dict
        .find(&plist)
        .and_then(|v| v.downcast::<CFDictionary>())
        .map(|d| {
            // SAFETY: an Info.plist dictionary is keyed by strings.
            let d: CFDictionary<CFString, CFType> =
                unsafe { CFDictionary::wrap_under_get_rule(d.as_concrete_TypeRef()) };
            InfoPlist {
                bundle_identifier: string(&d, &CFString::new("CFBundleIdentifier")),
                bundle_name: string(&d, &CFString::new("CFBundleName")),
                short_version: string(&d, &CFString::new("CFBundleShortVersionString")),
            }
        });
    info
}

/// The string under `key`, if there is one.
fn string(dict: &CFDictionary<CFString, CFType>, key: &CFString) -> Option<String> {
    dict.find(key)
        .and_then(|v| v.downcast::<CFString>())
        .map(|s| s.to_string())
}
