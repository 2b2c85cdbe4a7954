//! Handlers of the file tree's calls: names, attributes, xattrs, orphans.

use tessera_common::{
    locks::{HeldLock, LockAnswer, LockKind, LockRequest},
    Attr, FileKind, NewNode, SetAttr,
};
use tessera_proto::pb;

use crate::{
    fs::{Holder, MakeNode, Rename, Unlink},
    Meta, MetaError,
};

type Result<T> = std::result::Result<T, MetaError>;

fn attr(a: Attr) -> pb::Attr {
    a.into()
}

/// An unlink's or rename's answer: the orphan kept, and its lease.
fn orphaned(m: &Meta, orphan: Option<u64>) -> pb::UnlinkResponse {
    pb::UnlinkResponse {
        orphaned: orphan.into_iter().collect(),
        lease_ms: m.tree().orphan_lease().as_millis() as u64,
    }
}

pub(super) fn lookup(m: &Meta, r: pb::LookupRequest) -> Result<pb::Attr> {
    Ok(attr(m.tree().lookup(r.volume, r.parent, &r.name)?))
}

pub(super) fn lookup_page(m: &Meta, r: pb::LookupPageRequest) -> Result<pb::LookupPageResponse> {
    let page = m
        .tree()
        .lookup_page(r.volume, r.parent, &r.name, r.limit as usize)?;
    Ok(pb::LookupPageResponse {
        entries: page
            .entries
            .into_iter()
            .map(|(name, a)| pb::NamedAttr {
                name: name.into(),
                attr: Some(attr(a)),
            })
            .collect(),
        complete: page.complete,
    })
}

pub(super) fn get_attr(m: &Meta, r: pb::GetAttrRequest) -> Result<pb::Attr> {
    Ok(attr(m.tree().get_attr(r.volume, r.ino)?))
}

pub(super) fn set_attr(m: &Meta, r: pb::SetAttrRequest) -> Result<pb::Attr> {
    let change = SetAttr {
        perm: r.perm,
        uid: r.uid,
        gid: r.gid,
        size: r.size,
        atime_ns: r.atime_ns,
        mtime_ns: r.mtime_ns,
        session: r.session,
    };
    Ok(attr(m.tree().set_attr(r.volume, r.ino, &change)?))
}

pub(super) fn make_node(m: &Meta, r: pb::MakeNodeRequest) -> Result<pb::Attr> {
    let made = m.tree().make_node(&MakeNode {
        vol: r.volume,
        parent: r.parent,
        name: &r.name,
        node: NewNode {
            kind: FileKind::try_from(r.kind)?,
            perm: r.perm,
            uid: r.uid,
            gid: r.gid,
            rdev: r.rdev,
            target: &r.symlink_target,
        },
    })?;
    Ok(pb::Attr {
        parent: Some(Box::new(attr(made.parent))),
        ..attr(made.node)
    })
}

pub(super) fn link(m: &Meta, r: pb::LinkRequest) -> Result<pb::Attr> {
    Ok(attr(m.tree().link(
        r.volume,
        r.ino,
        r.new_parent,
        &r.new_name,
    )?))
}

pub(super) fn unlink(m: &Meta, r: pb::UnlinkRequest) -> Result<pb::UnlinkResponse> {
    let orphan = m.tree().unlink(&Unlink {
        vol: r.volume,
        parent: r.parent,
        name: &r.name,
        dir: r.dir,
        holder: Holder {
            open: &r.open,
            session: r.session,
        },
    })?;
    Ok(orphaned(m, orphan))
}

pub(super) fn rename(m: &Meta, r: pb::RenameRequest) -> Result<pb::UnlinkResponse> {
    let orphan = m.tree().rename(&Rename {
        vol: r.volume,
        parent: r.parent,
        name: &r.name,
        new_parent: r.new_parent,
        new_name: &r.new_name,
        flags: r.flags,
        holder: Holder {
            open: &r.open,
            session: r.session,
        },
    })?;
    Ok(orphaned(m, orphan))
}

pub(super) fn release_orphan(m: &Meta, r: pb::OrphanRequest) -> Result<pb::Empty> {
    m.tree().release_orphan(r.volume, r.ino)?;
    Ok(pb::Empty {})
}

pub(super) fn renew_orphans(m: &Meta, r: pb::RenewOrphansRequest) -> Result<pb::Empty> {
    m.tree().renew_orphans(r.volume, r.session, &r.inos)?;
    Ok(pb::Empty {})
}

pub(super) fn read_dir(m: &Meta, r: pb::ReadDirRequest) -> Result<pb::ReadDirResponse> {
    let entries = m
        .tree()
        .read_dir(r.volume, r.ino, &r.after, r.limit as usize)?;
    Ok(pb::ReadDirResponse {
        entries: entries.into_iter().map(Into::into).collect(),
    })
}

pub(super) fn read_link(m: &Meta, r: pb::ReadLinkRequest) -> Result<pb::ReadLinkResponse> {
    Ok(pb::ReadLinkResponse {
        target: m.tree().read_link(r.volume, r.ino)?.into(),
    })
}

pub(super) fn get_xattr(m: &Meta, r: pb::XattrRequest) -> Result<pb::XattrValue> {
    Ok(pb::XattrValue {
        value: m.tree().get_xattr(r.volume, r.ino, &r.name)?.into(),
    })
}

pub(super) fn set_xattr(m: &Meta, r: pb::SetXattrRequest) -> Result<pb::Empty> {
    m.tree()
        .set_xattr(r.volume, r.ino, &r.name, &r.value, r.flags)?;
    Ok(pb::Empty {})
}

pub(super) fn list_xattr(m: &Meta, r: pb::GetAttrRequest) -> Result<pb::XattrNames> {
    let names = m.tree().list_xattr(r.volume, r.ino)?;
    Ok(pb::XattrNames {
        names: names.into_iter().map(Into::into).collect(),
    })
}

pub(super) fn remove_xattr(m: &Meta, r: pb::XattrRequest) -> Result<pb::Empty> {
    m.tree().remove_xattr(r.volume, r.ino, &r.name)?;
    Ok(pb::Empty {})
}

pub(super) fn sync(m: &Meta, r: pb::SyncRequest) -> Result<pb::Empty> {
    m.tree().sync(r.volume)?;
    Ok(pb::Empty {})
}

fn lock_request(r: &pb::LockRequest) -> Result<LockRequest> {
    let kind = pb::LockType::try_from(r.r#type)
        .map_err(|_| MetaError::Invalid(format!("lock type {} is not one of 0, 1, 2", r.r#type)))?;
    Ok(LockRequest {
        vol: r.volume,
        ino: r.ino,
        session: r.session,
        owner: r.owner,
        pid: r.pid,
        start: r.start,
        end: r.end,
        kind: match kind {
            pb::LockType::Unlock => None,
            pb::LockType::Read => Some(LockKind::Read),
            pb::LockType::Write => Some(LockKind::Write),
        },
    })
}

fn lock_response(m: &Meta, answer: LockAnswer) -> pb::LockResponse {
    let (conflict, foreign_change) = match answer {
        LockAnswer::Granted { foreign_change } => (None, foreign_change),
        LockAnswer::Held(h) => (Some(h), 0),
    };
    pb::LockResponse {
        foreign_change,
        conflict: conflict.map(|h: HeldLock| pb::HeldLock {
            start: h.range.start,
            end: h.range.end,
            r#type: match h.range.kind {
                LockKind::Read => pb::LockType::Read,
                LockKind::Write => pb::LockType::Write,
            } as i32,
            pid: h.pid,
        }),
        lease_ms: m.tree().lock_lease().as_millis() as u64,
    }
}

pub(super) fn set_lock(m: &Meta, r: pb::LockRequest) -> Result<pb::LockResponse> {
    let answer = m.tree().set_lock(&lock_request(&r)?)?;
    Ok(lock_response(m, answer))
}

pub(super) fn test_lock(m: &Meta, r: pb::LockRequest) -> Result<pb::LockResponse> {
    let answer = match m.tree().test_lock(&lock_request(&r)?)? {
        Some(h) => LockAnswer::Held(h),
        None => LockAnswer::Granted { foreign_change: 0 },
    };
    Ok(lock_response(m, answer))
}

pub(super) fn renew_locks(m: &Meta, r: pb::RenewLocksRequest) -> Result<pb::Empty> {
    m.tree().renew_locks(r.session)?;
    Ok(pb::Empty {})
}

#[cfg(test)]
mod tests {
    use tessera_proto::pb;

    use super::lock_request;
    use crate::MetaError;

    #[test]
    fn a_lock_request_of_an_unknown_type_is_refused() {
        let r = pb::LockRequest {
            r#type: 7,
            ..Default::default()
        };
        assert!(matches!(lock_request(&r), Err(MetaError::Invalid(_))));
        let r = pb::LockRequest {
            r#type: pb::LockType::Write as i32,
            start: 10,
            end: 20,
            ..Default::default()
        };
        assert_eq!(lock_request(&r).unwrap().range().unwrap().end, 20);
    }
}
