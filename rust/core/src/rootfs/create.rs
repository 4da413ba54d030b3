//! One creator per entry type. Each replaces whatever is at its path (but a
//! directory already there is kept), never following a symbolic link there
//! (`O_NOFOLLOW | O_EXCL`).

use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink as make_symlink, OpenOptionsExt};
use std::path::Path;

use tar::EntryType;

use super::resolve::{clean_path, Root};
use super::sys::{mknod, Node};
use super::{EntryError, Op};

/// What an entry's header says about the file, besides its content.
pub(super) struct Meta {
    pub(super) mode: u32,
    uid: u64,
    gid: u64,
    pub(super) mtime: u64,
    device: (u32, u32),
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Owners are set (needs root).
    owners: bool,
}

impl Meta {
    pub(super) fn of<R: Read>(entry: &mut tar::Entry<'_, R>, owners: bool) -> Meta {
        let header = entry.header();
        Meta {
            mode: header.mode().unwrap_or(0o644) & 0o7777,
            uid: header.uid().unwrap_or(0),
            gid: header.gid().unwrap_or(0),
            mtime: header.mtime().unwrap_or(0),
            device: (
                header.device_major().ok().flatten().unwrap_or(0),
                header.device_minor().ok().flatten().unwrap_or(0),
            ),
            xattrs: xattrs_of(entry),
            owners,
        }
    }

    /// Owner, mode, xattrs (where the filesystem takes them), and the mtime
    /// unless it is set later (directories: once their content is written).
    fn apply(&self, node: Node<'_>, mtime: bool) -> Result<(), EntryError> {
        let set = || -> io::Result<()> {
            if self.owners {
                // Before chmod: chown clears the set-id bits.
                node.chown(self.uid, self.gid)?;
            }
            node.chmod(self.mode)?;
            for (k, v) in &self.xattrs {
                let _ = node.set_xattr(k, v);
            }
            if mtime {
                node.set_mtime(self.mtime)?;
            }
            Ok(())
        };
        set().op("set attributes")
    }
}

fn xattrs_of<R: Read>(entry: &mut tar::Entry<'_, R>) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    if let Ok(Some(exts)) = entry.pax_extensions() {
        for ext in exts.flatten() {
            if let Some(name) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") {
                out.push((name.to_vec(), ext.value_bytes().to_vec()));
            }
        }
    }
    out
}

/// Removes whatever is at `path` (a directory with its contents), never
/// following a symbolic link; a missing path is fine.
pub(super) fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// A directory: one already there (`known` to be one: not looked at) is
/// kept with its content, its mode set.
pub(super) fn directory(dest: &Path, meta: &Meta, known: bool) -> Result<(), EntryError> {
    if !known && !fs::symlink_metadata(dest).is_ok_and(|m| m.is_dir()) {
        remove_any(dest).op("remove")?;
        fs::create_dir(dest).op("mkdir")?;
    }
    meta.apply(Node::Path(dest), false)
}

/// A regular file, its content read from `data` through `buf`.
pub(super) fn regular(
    dest: &Path,
    meta: &Meta,
    data: &mut dyn Read,
    buf: &mut [u8],
) -> Result<(), EntryError> {
    let create = || {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(dest)
    };
    // Created first and removed only if something is there: most paths are
    // new, and O_EXCL never follows a link left at the path.
    let mut file = match create() {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            remove_any(dest).op("remove")?;
            create()
        }
        created => created,
    }
    .op("create")?;
    loop {
        let n = match data.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(EntryError::Read(e)),
        };
        file.write_all(&buf[..n]).op("write")?;
    }
    // Through the descriptor: no path walk, and the mtime after the writes.
    meta.apply(Node::Open(&file), true)
}

/// A symbolic link to `target`, kept as it is (resolved only when a later
/// entry's parents go through it).
pub(super) fn symlink(dest: &Path, meta: &Meta, target: Option<&[u8]>) -> Result<(), EntryError> {
    let target = target.ok_or_else(|| EntryError::refused("symlink without target"))?;
    remove_any(dest).op("remove")?;
    make_symlink(OsStr::from_bytes(target), dest).op("symlink")?;
    // Best effort: not every filesystem takes these on a link.
    let node = Node::Path(dest);
    if meta.owners {
        let _ = node.chown(meta.uid, meta.gid);
    }
    for (k, v) in &meta.xattrs {
        let _ = node.set_xattr(k, v);
    }
    let _ = node.set_mtime(meta.mtime);
    Ok(())
}

/// A hard link to `target` (a path from the top of the layer), which must
/// be inside the root and not a directory.
pub(super) fn hard_link(root: &mut Root<'_>, target: &[u8], dest: &Path) -> Result<(), EntryError> {
    let target_rel = clean_path(target)
        .map_err(|reason| EntryError::refused(format!("hard link target {reason}")))?
        .ok_or_else(|| EntryError::refused("hard link to the root"))?;
    let missing = || io::Error::new(io::ErrorKind::NotFound, "hard link target missing");
    let parent = root
        .dir(target_rel.parent().unwrap_or(Path::new("")), None)?
        .ok_or_else(missing)
        .op("link")?;
    let target = parent.abs.join(target_rel.file_name().unwrap_or_default());
    if fs::symlink_metadata(&target).op("link")?.is_dir() {
        return Err(EntryError::refused("hard link to a directory"));
    }
    if target != dest {
        remove_any(dest).op("remove")?;
        fs::hard_link(&target, dest).op("link")?;
    }
    Ok(())
}

/// A FIFO or a device node (`kind`).
pub(super) fn node(dest: &Path, kind: EntryType, meta: &Meta) -> Result<(), EntryError> {
    let file_type = match kind {
        EntryType::Fifo => libc::S_IFIFO,
        EntryType::Char => libc::S_IFCHR,
        _ => libc::S_IFBLK,
    };
    remove_any(dest).op("remove")?;
    mknod(dest, file_type | 0o600, meta.device.0, meta.device.1).op("mknod")?;
    meta.apply(Node::Path(dest), true)
}
