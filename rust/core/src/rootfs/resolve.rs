//! Paths inside the root: entry names cleaned, parent directories walked one
//! component at a time, a symbolic link among them resolved inside the root.

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::ops::Bound;
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

/// The directory extracted to, and the directories in it this extraction
/// created or found real (no symbolic link on the way), so that later
/// entries skip walking them again: most entries share their parents.
pub(super) struct Root<'a> {
    path: &'a Path,
    /// Relative, resolved paths. Only this extraction changes the tree, and
    /// every entry that replaces or removes a path forgets it and what is
    /// below it first, so a path here is still a real directory.
    known: BTreeSet<PathBuf>,
}

impl<'a> Root<'a> {
    /// `known`: what an earlier part of the same extraction learnt.
    pub(super) fn with_known(path: &'a Path, known: BTreeSet<PathBuf>) -> Self {
        Root { path, known }
    }

    pub(super) fn into_known(self) -> BTreeSet<PathBuf> {
        self.known
    }

    /// `rel` (resolved) is known to be a real directory.
    pub(super) fn knows(&self, rel: &Path) -> bool {
        self.known.contains(rel)
    }

    /// `rel` (resolved) was just made or found a real directory.
    pub(super) fn remember(&mut self, rel: PathBuf) {
        self.known.insert(rel);
    }

    /// `rel` (resolved) is about to be replaced or removed: it and every
    /// path below it are looked at again. Paths sort component by component,
    /// so those below `rel` follow it in the set.
    pub(super) fn forget(&mut self, rel: &Path) {
        let below: Vec<PathBuf> = self
            .known
            .range::<Path, _>((Bound::Included(rel), Bound::Unbounded))
            .take_while(|p| p.starts_with(rel))
            .cloned()
            .collect();
        for p in below {
            self.known.remove(&p);
        }
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
            done.push(&part);
            if self.known.contains(&done) {
                continue;
            }
            let abs = self.path.join(&done);
            match fs::symlink_metadata(&abs) {
                Ok(m) if m.file_type().is_symlink() => {
                    done.pop();
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
                Ok(m) if m.is_dir() => {
                    self.known.insert(done.clone());
                }
                Ok(_) => {
                    let what = format!("{} is not a directory", done.display());
                    return Err(io::Error::new(io::ErrorKind::NotADirectory, what))
                        .op("open parent");
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    let Some(created) = created.as_deref_mut() else {
                        return Ok(None);
                    };
                    fs::create_dir(&abs).op("mkdir")?;
                    let _ = fs::set_permissions(&abs, fs::Permissions::from_mode(0o755));
                    self.known.insert(done.clone());
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
        if self.knows(rel) {
            return Some(self.path.join(rel));
        }
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

    #[test]
    fn known_directories_are_forgotten_when_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        fs::create_dir(&outside).unwrap();
        let root = tmp.path().join("root");
        fs::create_dir(&root).unwrap();
        let l1 = layer(tmp.path(), "l1", |b| {
            for d in ["a/", "a/b/", "w/", "w/sub/", "o/", "o/sub/", "r/", "r/sub/"] {
                dir(b, d);
            }
            file(b, "a/b/f", b"f");
        });
        // Each parent below was known as a real directory after layer 1.
        let l2 = layer(tmp.path(), "l2", |b| {
            link(b, "a", EntryType::Symlink, outside.to_str().unwrap());
            file(b, "a/b/g", b"g"); // through the link, inside the root
            file(b, ".wh.w", b"");
            file(b, "w/sub/x", b"x"); // made again
            file(b, "o/.wh..wh..opq", b"");
            file(b, "o/sub/x", b"x");
        });
        extract_layers(&root, &[l1, l2], &opts()).unwrap();
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
        let inside = root.join(outside.strip_prefix("/").unwrap());
        assert_eq!(fs::read(inside.join("b/g")).unwrap(), b"g");
        assert_eq!(fs::read(root.join("w/sub/x")).unwrap(), b"x");
        assert_eq!(fs::read(root.join("o/sub/x")).unwrap(), b"x");

        let l3 = layer(tmp.path(), "l3", |b| {
            file(b, "r", b"now a file");
            file(b, "r/sub/x", b"x");
        });
        let err = extract_layers(&root, &[l3], &opts()).unwrap_err();
        assert!(
            err.to_string()
                .contains("open parent: r is not a directory"),
            "{err}"
        );

        // A known directory replaced by a link out of the root: refused.
        let root2 = tmp.path().join("root2");
        fs::create_dir(&root2).unwrap();
        let l4 = layer(tmp.path(), "l4", |b| {
            dir(b, "c/");
            file(b, "c/x", b"x");
            link(b, "c", EntryType::Symlink, "../outside");
            file(b, "c/y", b"pwned");
        });
        let err = extract_layers(&root2, &[l4], &opts()).unwrap_err();
        assert!(matches!(err, ExtractError::Unsafe { .. }), "{err}");
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
    }
}
