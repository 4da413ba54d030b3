//! Whiteouts: `.wh.<name>` removes `<name>` from the layers below;
//! `.wh..wh..opq` hides everything they put in its directory.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::create::remove_any;
use super::resolve::Root;
use super::{EntryError, Op};

/// `.wh.<hidden>` in `dir` (`hidden` is `.wh..opq` for the opaque marker);
/// `written` holds the paths this layer created, which a marker keeps.
pub(super) fn whiteout(
    root: &mut Root<'_>,
    written: &HashSet<PathBuf>,
    dir: &Path,
    hidden: &[u8],
) -> Result<(), EntryError> {
    let Some(dir) = root.dir(dir, None)? else {
        return Ok(()); // nothing below to hide
    };
    if hidden == b".wh..opq" {
        root.forget(&dir.rel); // some of what is below goes
        return clear_lower(&dir.abs, &dir.rel, written).op("opaque whiteout");
    }
    if hidden.starts_with(b".wh.") {
        return Ok(()); // other aufs metadata (.wh..wh.plnk, ...): not files
    }
    if hidden.is_empty() || hidden == b"." || hidden == b".." {
        return Err(EntryError::refused("whiteout of no file"));
    }
    let hidden = OsStr::from_bytes(hidden);
    root.forget(&dir.rel.join(hidden));
    remove_any(&dir.abs.join(hidden)).op("whiteout")
}

/// An opaque directory: removes what lower layers put in `dir_abs`, i.e.
/// every child this layer did not write (recursing into those it did).
fn clear_lower(dir_abs: &Path, dir_rel: &Path, written: &HashSet<PathBuf>) -> io::Result<()> {
    for child in fs::read_dir(dir_abs)? {
        let child = child?;
        let rel = dir_rel.join(child.file_name());
        let abs = dir_abs.join(child.file_name());
        if written.contains(&rel) {
            if child.file_type()?.is_dir() {
                clear_lower(&abs, &rel, written)?;
            }
        } else {
            remove_any(&abs)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::Path;

    use tar::EntryType;

    use crate::rootfs::extract_layers;
    use crate::rootfs::testutil::*;

    #[test]
    fn whiteouts_opaque_and_links() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        fs::create_dir(&root).unwrap();
        let l1 = layer(tmp.path(), "l1", |b| {
            dir(b, "a/");
            file(b, "a/old", b"old");
            dir(b, "a/sub/");
            file(b, "a/sub/deep", b"deep");
            file(b, "gone", b"x");
            dir(b, "keep/");
            file(b, "keep/k", b"k");
        });
        let l2 = layer(tmp.path(), "l2", |b| {
            file(b, "a/new", b"new");
            file(b, "a/.wh..wh..opq", b"");
            file(b, ".wh.gone", b"");
            link(b, "keep/hl", EntryType::Link, "keep/k");
            link(b, "sl", EntryType::Symlink, "/etc/passwd");
        });
        extract_layers(&root, &[l1, l2], &opts()).unwrap();
        assert!(!root.join("a/old").exists());
        assert!(!root.join("a/sub").exists());
        assert_eq!(fs::read(root.join("a/new")).unwrap(), b"new");
        assert!(!root.join("gone").exists());
        assert_eq!(fs::read(root.join("keep/hl")).unwrap(), b"k");
        assert_eq!(
            fs::read_link(root.join("sl")).unwrap(),
            Path::new("/etc/passwd")
        );
    }
}
