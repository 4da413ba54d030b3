//! The system calls on the files being created: their attributes set through
//! an open descriptor (no path walk) or on a path whose final symbolic link
//! is never followed; and mknod.

use std::ffi::CString;
use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{fchown, lchown, PermissionsExt};
use std::path::Path;

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A file whose attributes are set.
#[derive(Clone, Copy)]
pub(super) enum Node<'a> {
    Open(&'a File),
    /// Not followed if it is a symbolic link, except by `chmod` (Linux has
    /// no mode on links: callers never chmod one).
    Path(&'a Path),
}

impl Node<'_> {
    pub(super) fn chown(self, uid: u64, gid: u64) -> io::Result<()> {
        let (uid, gid) = (Some(uid as u32), Some(gid as u32));
        match self {
            Node::Open(file) => fchown(file, uid, gid),
            Node::Path(path) => lchown(path, uid, gid),
        }
    }

    pub(super) fn chmod(self, mode: u32) -> io::Result<()> {
        let perms = fs::Permissions::from_mode(mode);
        match self {
            Node::Open(file) => file.set_permissions(perms),
            Node::Path(path) => fs::set_permissions(path, perms),
        }
    }

    pub(super) fn set_mtime(self, mtime: u64) -> io::Result<()> {
        let t = libc::timespec {
            tv_sec: mtime.min(i64::MAX as u64) as libc::time_t,
            tv_nsec: 0,
        };
        let times = [t, t];
        check(match self {
            // SAFETY: an open descriptor; times points at two timespecs.
            Node::Open(file) => unsafe { libc::futimens(file.as_raw_fd(), times.as_ptr()) },
            Node::Path(path) => {
                let cpath = c_path(path)?;
                // SAFETY: cpath is a valid C string; times points at two timespecs.
                unsafe {
                    libc::utimensat(
                        libc::AT_FDCWD,
                        cpath.as_ptr(),
                        times.as_ptr(),
                        libc::AT_SYMLINK_NOFOLLOW,
                    )
                }
            }
        })
    }

    pub(super) fn set_xattr(self, name: &[u8], value: &[u8]) -> io::Result<()> {
        let cname = CString::new(name).map_err(io::Error::other)?;
        let (ptr, len) = (value.as_ptr().cast(), value.len());
        check(match self {
            // SAFETY: an open descriptor, a valid C string; value pointer/length from a slice.
            Node::Open(file) => unsafe {
                libc::fsetxattr(file.as_raw_fd(), cname.as_ptr(), ptr, len, 0)
            },
            Node::Path(path) => {
                let cpath = c_path(path)?;
                // SAFETY: valid C strings; value pointer/length from a slice.
                unsafe { libc::lsetxattr(cpath.as_ptr(), cname.as_ptr(), ptr, len, 0) }
            }
        })
    }
}

pub(super) fn mknod(path: &Path, mode: libc::mode_t, major: u32, minor: u32) -> io::Result<()> {
    let cpath = c_path(path)?;
    // SAFETY: a valid C string; mknod does not keep the pointer.
    check(unsafe { libc::mknod(cpath.as_ptr(), mode, libc::makedev(major, minor)) })
}
