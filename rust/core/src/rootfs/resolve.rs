//! Paths inside the root: entry names cleaned, parent directories walked one
//! component at a time, a symbolic link among them resolved inside the root.

use std::collections::{HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::{EntryError, Op};

/// Symbolic links followed while resolving one path (Linux's own limit).
const MAX_LINKS: usize = 40;

/// The entry's path as relative components; `Ok(None)` for the root itself.
pub(super) fn clean_path(raw: &[u8]) -> Result<Option<PathBuf>, &'static str> {
    if raw.first() == Some(&b'/') {
        return Err("is an absolute path");
    }
    let mut out = PathBuf::new();
    for part in raw.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err("has a '..' component (it would escape the root)"),
            p if p.contains(&0) => return Err("has a NUL byte"),
            p => out.push(OsStr::from_bytes(p)),
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

/// A path under the root: absolute, and relative to the root with every
/// symbolic link resolved.
pub(super) struct Resolved {
    pub(super) abs: PathBuf,
    pub(super) rel: PathBuf,
}

impl Resolved {
    pub(super) fn join(&self, name: &OsStr) -> Resolved {
        Resolved {
            abs: self.abs.join(name),
            rel: self.rel.join(name),
        }
    }
}

/// The directory extracted to.
pub(super) struct Root<'a> {
    path: &'a Path,
}

impl<'a> Root<'a> {
    pub(super) fn new(path: &'a Path) -> Self {
        Root { path }
    }

    /// The directory `rel` names under the root.
    ///
    /// Walked one component at a time with `symlink_metadata`. A symbolic
    /// link among the parents is followed as docker does, inside the root: an
    /// absolute target starts again at the root (so `lib -> /usr/lib` works);
    /// a target whose `..` would climb above the root is refused, as are
    /// link loops. Missing directories are created (0755) and recorded in
    /// `created` when it is given, else `Ok(None)`.
    pub(super) fn dir(
        &mut self,
        rel: &Path,
        mut created: Option<&mut HashSet<PathBuf>>,
    ) -> Result<Option<Resolved>, EntryError> {
        let mut done = PathBuf::new();
        let mut todo: VecDeque<OsString> = rel.iter().map(|c| c.to_os_string()).collect();
        let mut links = 0;
        while let Some(part) = todo.pop_front() {
            if part == "." {
                continue;
            }
            if part == ".." {
                if !done.pop() {
                    return Err(EntryError::refused(
                        "a symbolic link among its parents points outside the root",
                    ));
                }
                continue;
            }
            let abs = self.path.join(&done).join(&part);
            match fs::symlink_metadata(&abs) {
                Ok(m) if m.file_type().is_symlink() => {
                    links += 1;
                    if links > MAX_LINKS {
                        return Err(EntryError::refused("too many levels of symbolic links"));
                    }
                    let target = fs::read_link(&abs).op("readlink")?;
                    if target.is_absolute() {
                        done.clear();
                    }
                    for c in target.iter().rev() {
                        if c != "/" {
                            todo.push_front(c.to_os_string());
                        }
                    }
                }
                Ok(m) if m.is_dir() => done.push(&part),
                Ok(_) => {
                    let what = format!("{} is not a directory", done.join(&part).display());
                    return Err(io::Error::new(io::ErrorKind::NotADirectory, what))
                        .op("open parent");
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    let Some(created) = created.as_deref_mut() else {
                        return Ok(None);
                    };
                    fs::create_dir(&abs).op("mkdir")?;
                    let _ = fs::set_permissions(&abs, fs::Permissions::from_mode(0o755));
                    done.push(&part);
                    created.insert(done.clone());
                }
                Err(e) => return Err(e).op("stat"),
            }
        }
        Ok(Some(Resolved {
            abs: self.path.join(&done),
            rel: done,
        }))
    }

    /// `root/rel` when every component of `rel` is a real directory (no link).
    pub(super) fn real_dir(&self, rel: &Path) -> Option<PathBuf> {
        let mut path = self.path.to_path_buf();
        for part in rel.components() {
            path.push(part);
            let meta = fs::symlink_metadata(&path).ok()?;
            if !meta.file_type().is_dir() {
                return None;
            }
        }
        Some(path)
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use tar::EntryType;

    use crate::rootfs::testutil::*;
    use crate::rootfs::{extract_layers, ExtractError};

    #[test]
    fn symlinked_parents_resolve_inside_the_root() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        fs::create_dir(&root).unwrap();
        // Merged /usr (lib -> usr/lib), an absolute link (var/run -> /run),
        // a chain through `..`, and an opaque whiteout seen through a link.
        let l1 = layer(tmp.path(), "l1", |b| {
            dir(b, "usr/lib/");
            file(b, "usr/lib/old", b"old");
            link(b, "lib", EntryType::Symlink, "usr/lib");
            dir(b, "run/");
            dir(b, "var/");
            link(b, "var/run", EntryType::Symlink, "/run");
            link(b, "var/up", EntryType::Symlink, "../usr/./lib/..");
        });
        let l2 = layer(tmp.path(), "l2", |b| {
            file(b, "lib/libx.so", b"x");
            file(b, "var/run/pid", b"1");
            file(b, "var/up/lib/y", b"y");
            file(b, "lib/.wh..wh..opq", b"");
            file(b, "lib/z", b"z");
        });
        extract_layers(&root, &[l1, l2], &opts()).unwrap();
        assert_eq!(fs::read(root.join("run/pid")).unwrap(), b"1");
        assert_eq!(fs::read(root.join("usr/lib/z")).unwrap(), b"z");
        assert!(!root.join("usr/lib/old").exists()); // hidden by the opaque marker
                                                     // Written in this layer before the marker: kept, through the link.
        assert_eq!(fs::read(root.join("usr/lib/libx.so")).unwrap(), b"x");
        assert_eq!(fs::read(root.join("usr/lib/y")).unwrap(), b"y");
        assert!(fs::symlink_metadata(root.join("lib")).unwrap().is_symlink());

        // A loop is refused, not followed forever.
        let root2 = tmp.path().join("root2");
        fs::create_dir(&root2).unwrap();
        let l3 = layer(tmp.path(), "l3", |b| {
            link(b, "a", EntryType::Symlink, "b");
            link(b, "b", EntryType::Symlink, "a");
            file(b, "a/x", b"x");
        });
        let err = extract_layers(&root2, &[l3], &opts()).unwrap_err();
        assert!(err.to_string().contains("too many levels"), "{err}");
    }

    #[test]
    fn refuses_escapes() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        fs::create_dir(&outside).unwrap();
        type Build = Box<dyn Fn(&mut tar::Builder<Vec<u8>>)>;
        let cases: Vec<(&str, Build)> = vec![
            ("dotdot", Box::new(|b| file(b, "../x", b"pwned"))),
            ("abs", Box::new(|b| file(b, "/x", b"pwned"))),
            (
                "through-symlink",
                Box::new(|b| {
                    link(b, "esc", EntryType::Symlink, "../outside");
                    file(b, "esc/x", b"pwned");
                }),
            ),
            (
                "hardlink-out",
                Box::new(|b| link(b, "h", EntryType::Link, "../outside/y")),
            ),
        ];
        for (name, build) in cases {
            let root = tmp.path().join(format!("root-{name}"));
            fs::create_dir(&root).unwrap();
            let l = layer(tmp.path(), name, |b| build(b));
            let err = extract_layers(&root, &[l], &opts()).unwrap_err();
            assert!(matches!(err, ExtractError::Unsafe { .. }), "{name}: {err}");
            assert!(!tmp.path().join("x").exists());
            assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
        }
    }
}
