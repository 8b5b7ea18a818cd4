//! Where the service mounted the dashboard, so its links work under any prefix.

use axum::extract::{OriginalUri, Request};

/// The path the service mounted the dashboard at ("" at the root, "/jobs" nested there),
/// from the full path and the path the nested router sees.
pub(crate) fn base_path(request: &Request) -> String {
    let inner = request.uri().path();
    let full = request
        .extensions()
        .get::<OriginalUri>()
        .map_or(inner, |original| original.0.path());
    mount_of(full, inner)
}

/// The mount path, from the full path and the part the nested router sees.
pub(crate) fn mount_of(full: &str, inner: &str) -> String {
    let base = match full.strip_suffix(inner) {
        Some(base) => base,
        // `/jobs` nested at `/jobs` reaches the inner router as `/`.
        None if inner == "/" => full,
        None => "",
    };
    base.trim_end_matches('/').to_owned()
}

#[cfg(test)]
mod tests {
    use super::mount_of;

    #[test]
    fn the_mount_path_from_full_and_inner_paths() {
        assert_eq!(mount_of("/jobs/queues", "/queues"), "/jobs");
        assert_eq!(mount_of("/jobs", "/"), "/jobs");
        assert_eq!(mount_of("/jobs/", "/"), "/jobs");
        assert_eq!(mount_of("/queues", "/queues"), "");
        assert_eq!(mount_of("/", "/"), "");
    }
}
