//! The system calls std has no wrapper for, on paths that are never followed
//! when they end in a symbolic link.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)
}

pub(super) fn set_mtime(path: &Path, mtime: u64) -> io::Result<()> {
    let cpath = c_path(path)?;
    let t = libc::timespec {
        tv_sec: mtime.min(i64::MAX as u64) as libc::time_t,
        tv_nsec: 0,
    };
    let times = [t, t];
    // SAFETY: cpath is a valid C string; times points at two timespecs.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            cpath.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub(super) fn set_xattr(path: &Path, name: &[u8], value: &[u8]) -> io::Result<()> {
    let cpath = c_path(path)?;
    let cname = CString::new(name).map_err(io::Error::other)?;
    // SAFETY: valid C strings; value pointer/length from a slice.
    let rc = unsafe {
        libc::lsetxattr(
            cpath.as_ptr(),
            cname.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub(super) fn mknod(path: &Path, mode: libc::mode_t, major: u32, minor: u32) -> io::Result<()> {
    let cpath = c_path(path)?;
    // SAFETY: a valid C string; mknod does not keep the pointer.
    let rc = unsafe { libc::mknod(cpath.as_ptr(), mode, libc::makedev(major, minor)) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
