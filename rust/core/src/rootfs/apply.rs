//! One layer's entries, one after another: each checked, resolved inside the
//! root, and handed to the creator of its type.

use std::collections::HashSet;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use tar::EntryType;

use super::create::{self, Meta};
use super::guard::{show_name, PATH_MAX};
use super::resolve::{clean_path, Root};
use super::sys::Node;
use super::whiteout::whiteout;
use super::{EntryError, ExtractError, ExtractOptions, MAX_PATH};

/// Why a layer's application stopped.
pub(super) enum Stop {
    /// The extraction's own failure (an unsafe entry, a full disk).
    Failed(ExtractError),
    /// Reading the layer failed: the tar crate's error.
    Unreadable(io::Error),
}

pub(super) struct Applier<'a, 'r> {
    root: &'a mut Root<'r>,
    layer: &'a str,
    opts: &'a ExtractOptions,
    /// Set from another thread to stop at the next entry.
    cancel: &'a AtomicBool,
    /// Paths (relative) this layer created: an opaque marker keeps them.
    written: HashSet<PathBuf>,
    /// Directories (resolved, relative) whose mtime is set once the layer is done.
    dir_times: Vec<(PathBuf, u64)>,
    /// Regular files' content passes through it.
    buf: Vec<u8>,
}

impl<'a, 'r> Applier<'a, 'r> {
    pub(super) fn new(
        root: &'a mut Root<'r>,
        layer: &'a str,
        opts: &'a ExtractOptions,
        cancel: &'a AtomicBool,
    ) -> Self {
        Applier {
            root,
            layer,
            opts,
            cancel,
            written: HashSet::new(),
            dir_times: Vec::new(),
            buf: vec![0; 256 * 1024],
        }
    }

    pub(super) fn run(mut self, reader: &mut dyn Read) -> Result<(), Stop> {
        let mut archive = tar::Archive::new(reader);
        for entry in archive.entries().map_err(Stop::Unreadable)? {
            if self.cancel.load(Ordering::Relaxed) {
                return Err(Stop::Failed(ExtractError::Cancelled));
            }
            let mut entry = entry.map_err(Stop::Unreadable)?;
            let raw = entry.path_bytes().into_owned();
            self.entry(&mut entry, &raw)
                .map_err(|e| self.stop(&show_name(&raw), e))?;
        }
        for (rel, mtime) in self.dir_times.iter().rev() {
            // Best effort, and only where the path is still real directories
            // all the way: a later entry may have replaced one of them with a
            // symbolic link, which must not be followed out of the root.
            if let Some(path) = self.root.real_dir(rel) {
                let _ = Node::Path(&path).set_mtime(*mtime);
            }
        }
        Ok(())
    }

    /// The entry's error, with the layer and the entry (as `shown`) named.
    fn stop(&self, shown: &str, e: EntryError) -> Stop {
        let layer = self.layer.to_owned();
        let entry = shown.to_owned();
        Stop::Failed(match e {
            EntryError::Refused(reason) => ExtractError::Unsafe {
                layer,
                entry,
                reason,
            },
            EntryError::TooLong { what, size } => ExtractError::TooLong {
                layer,
                what: format!("the {what} of entry \"{shown}\""),
                size,
                limit: MAX_PATH,
                bound: PATH_MAX,
            },
            EntryError::Io { op, source } => ExtractError::Io {
                layer,
                entry,
                op,
                source,
            },
            EntryError::Read(e) => return Stop::Unreadable(e),
        })
    }

    fn entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        raw: &[u8],
    ) -> Result<(), EntryError> {
        // A PAX path or linkpath (MAX_PAX bytes at most) can be longer.
        let link_len = entry.link_name_bytes().map_or(0, |l| l.len());
        for (what, len) in [("path", raw.len()), ("link target", link_len)] {
            if len as u64 > MAX_PATH {
                let size = len as u64;
                return Err(EntryError::TooLong { what, size });
            }
        }
        let Some(rel) = clean_path(raw).map_err(EntryError::refused)? else {
            return Ok(()); // the root itself
        };
        let name = rel.file_name().unwrap_or_default();
        let parent = rel.parent().unwrap_or(Path::new(""));
        if let Some(hidden) = name.as_bytes().strip_prefix(b".wh.") {
            return whiteout(self.root, &self.written, parent, hidden);
        }
        let Some(parent) = self.root.dir(parent, Some(&mut self.written))? else {
            unreachable!("parents are created");
        };
        let dest = parent.join(name);
        let kind = entry.header().entry_type();
        let meta = Meta::of(entry, self.opts.privileged);
        if kind != EntryType::Directory {
            self.root.forget(&dest.rel); // whatever is there is replaced
        }
        match kind {
            EntryType::Directory => {
                create::directory(&dest.abs, &meta, self.root.knows(&dest.rel))?;
                self.root.remember(dest.rel.clone());
                self.dir_times.push((dest.rel.clone(), meta.mtime));
            }
            EntryType::Regular | EntryType::Continuous => {
                create::regular(&dest.abs, &meta, entry, &mut self.buf)?;
            }
            EntryType::Symlink => {
                let target = entry.link_name_bytes();
                create::symlink(&dest.abs, &meta, target.as_deref())?;
            }
            EntryType::Link => {
                let target = entry.link_name_bytes().unwrap_or_default();
                create::hard_link(self.root, &target, &dest.abs)?;
            }
            EntryType::Fifo | EntryType::Char | EntryType::Block => {
                if kind != EntryType::Fifo && !self.opts.privileged {
                    return Ok(()); // device nodes need root: skipped
                }
                create::node(&dest.abs, kind, &meta)?;
            }
            // pax/GNU headers are read by the tar crate; anything else has no file.
            _ => return Ok(()),
        }
        self.written.insert(dest.rel);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use tar::EntryType;

    use crate::rootfs::extract_layers;
    use crate::rootfs::sys::Node;
    use crate::rootfs::testutil::*;

    #[test]
    fn directory_times_are_never_set_through_a_later_link() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        fs::create_dir_all(outside.join("b")).unwrap();
        Node::Path(&outside.join("b")).set_mtime(12345).unwrap();
        let root = tmp.path().join("root");
        fs::create_dir(&root).unwrap();
        // a/ and a/b/ get their times at the layer's end; by then `a` is a
        // link to the outside (an absolute one: resolved in the root when
        // written through, but never followed for the saved times).
        let l = layer(tmp.path(), "l", |b| {
            dir(b, "a/");
            dir(b, "a/b/");
            link(b, "a", EntryType::Symlink, outside.to_str().unwrap());
        });
        extract_layers(&root, &[l], &opts()).unwrap();
        let mtime = fs::metadata(outside.join("b")).unwrap().modified().unwrap();
        let secs = mtime
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert_eq!(secs, 12345);

        let root2 = tmp.path().join("root2");
        fs::create_dir(&root2).unwrap();
        let l2 = layer(tmp.path(), "l2", |b| {
            link(b, "e", EntryType::Symlink, "");
            file(b, "e/x", b"x");
        });
        let err = extract_layers(&root2, &[l2], &opts()).unwrap_err();
        // Refused when made (the kernel would find nothing through it).
        assert!(err.to_string().contains("symlink without target"), "{err}");
    }

    #[test]
    fn paths_and_link_targets_over_path_max() {
        let tmp = tempfile::tempdir().unwrap();
        let long = format!("\x1b[31m{}", "a".repeat(5000));
        let (_, result) = extract_one(tmp.path(), "path", |b| {
            let records = pax(&[("path", long.as_bytes())]);
            ext(b, EntryType::XHeader, records.len() as u64, &records);
            file(b, "x", b"x");
        });
        let text = result.unwrap_err().to_string();
        // Cut to 200 characters and escaped: one short line.
        let shown = format!("\\u{{1b}}[31m{}…", "a".repeat(195));
        assert!(
            text.contains(&format!("the path of entry \"{shown}\" of 5005 bytes")),
            "{text}"
        );
        assert!(
            text.ends_with("over the limit of 4096 bytes (PATH_MAX)"),
            "{text}"
        );
        assert!(!text.contains('\x1b') && text.len() < 400, "{text}");

        let (root, result) = extract_one(tmp.path(), "link", |b| {
            let records = pax(&[("linkpath", "t".repeat(4097).as_bytes())]);
            ext(b, EntryType::XHeader, records.len() as u64, &records);
            link(b, "l", EntryType::Symlink, "short");
        });
        let text = result.unwrap_err().to_string();
        assert!(
            text.contains("the link target of entry \"l\" of 4097 bytes"),
            "{text}"
        );
        assert!(fs::symlink_metadata(root.join("l")).is_err());
    }
}
