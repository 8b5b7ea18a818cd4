//! An ordered list of middleware, shared by the client chain (around every enqueue) and the
//! server chain (around every perform). It knows nothing of jobs: each side adds its own
//! `run` and the methods that need the middleware trait.

use std::any::TypeId;
use std::fmt;
use std::sync::Arc;

pub(crate) struct Entry<M: ?Sized> {
    type_id: TypeId,
    name: &'static str,
    pub(crate) middleware: Arc<M>,
}

impl<M: ?Sized> Clone for Entry<M> {
    fn clone(&self) -> Self {
        Self {
            type_id: self.type_id,
            name: self.name,
            middleware: Arc::clone(&self.middleware),
        }
    }
}

/// An ordered list of middleware; the first is the outermost. A type appears at most once:
/// adding it again replaces the earlier entry, as in Sidekiq.
pub struct Chain<M: ?Sized> {
    pub(crate) entries: Vec<Entry<M>>,
}

impl<M: ?Sized> Default for Chain<M> {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
        }
    }
}

impl<M: ?Sized> Clone for Chain<M> {
    fn clone(&self) -> Self {
        Self {
            entries: self.entries.clone(),
        }
    }
}

impl<M: ?Sized> fmt::Debug for Chain<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|e| e.name))
            .finish()
    }
}

impl<M: ?Sized> Chain<M> {
    /// An empty chain.
    pub fn new() -> Self {
        Self::default()
    }

    pub(crate) fn position<T: 'static>(&self) -> Option<usize> {
        self.entries
            .iter()
            .position(|e| e.type_id == TypeId::of::<T>())
    }

    pub(crate) fn insert_at<T: 'static>(&mut self, index: usize, middleware: Arc<M>) {
        let mut index = index;
        if let Some(old) = self.position::<T>() {
            self.entries.remove(old);
            if old < index {
                index -= 1;
            }
        }
        let index = index.min(self.entries.len());
        let entry = Entry {
            type_id: TypeId::of::<T>(),
            name: std::any::type_name::<T>(),
            middleware,
        };
        self.entries.insert(index, entry);
    }

    /// Removes `T`; returns whether it was there.
    pub fn remove<T: 'static>(&mut self) -> bool {
        match self.position::<T>() {
            Some(i) => {
                self.entries.remove(i);
                true
            }
            None => false,
        }
    }

    /// Whether `T` is in the chain.
    pub fn contains<T: 'static>(&self) -> bool {
        self.position::<T>().is_some()
    }

    /// Whether the chain has no middleware.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The type names in order, outermost first.
    pub fn names(&self) -> Vec<&'static str> {
        self.entries.iter().map(|e| e.name).collect()
    }

    /// Removes everything.
    pub fn clear(&mut self) {
        self.entries.clear();
    }
}

/// The methods that put a middleware of a given trait into a chain. Written once here and
/// stamped out for the client and the server trait, since a generic `T: M` bound cannot
/// name a trait object's trait.
macro_rules! chain_methods {
    ($trait:ident) => {
        impl $crate::chain::Chain<dyn $trait> {
            /// Appends `middleware` (innermost), replacing an earlier one of the same type.
            pub fn add<T: $trait>(&mut self, middleware: T) -> &mut Self {
                let len = self.entries.len();
                self.insert_at::<T>(len, ::std::sync::Arc::new(middleware));
                self
            }

            /// Puts `middleware` first (outermost), replacing an earlier one of the same type.
            pub fn prepend<T: $trait>(&mut self, middleware: T) -> &mut Self {
                self.insert_at::<T>(0, ::std::sync::Arc::new(middleware));
                self
            }

            /// Puts `middleware` just outside `Before`, or last when `Before` is absent.
            pub fn insert_before<Before: 'static, T: $trait>(
                &mut self,
                middleware: T,
            ) -> &mut Self {
                let index = self.position::<Before>().unwrap_or(self.entries.len());
                self.insert_at::<T>(index, ::std::sync::Arc::new(middleware));
                self
            }

            /// Puts `middleware` just inside `After`, or last when `After` is absent.
            pub fn insert_after<After: 'static, T: $trait>(&mut self, middleware: T) -> &mut Self {
                let index = self
                    .position::<After>()
                    .map_or(self.entries.len(), |i| i + 1);
                self.insert_at::<T>(index, ::std::sync::Arc::new(middleware));
                self
            }
        }
    };
}
pub(crate) use chain_methods;
