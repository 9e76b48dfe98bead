//! The maps and sets of the core's state machines, chosen per target: hash tables on the node,
//! plain lists in WebAssembly.
//!
//! The WebAssembly build (the fake server for frontend tests) has a size budget and holds a
//! few sockets and topics, where a list searched front to back is as fast as a hash table and
//! its code is a fraction of the size: swapping the registry's, connections' and rules' hash
//! maps for [`VecMap`] and [`VecSet`] keeps hashbrown, foldhash and SipHash out of the module
//! (about 7 KiB gzipped). The node keeps its hash tables. Both offer the same operations, and
//! nothing may depend on their iteration order (a hash table has none): callers that need one
//! sort.

// On the node only the tests use the lists (they are the WebAssembly build's collections).
#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

use std::borrow::Borrow;

/// The core's map: a hash table on the node, a [`VecMap`] in WebAssembly.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) type Map<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
/// The core's map: a hash table on the node, a [`VecMap`] in WebAssembly.
#[cfg(target_arch = "wasm32")]
pub(crate) type Map<K, V> = VecMap<K, V>;

/// The core's set: a hash set on the node, a [`VecSet`] in WebAssembly.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) type Set<T> = std::collections::HashSet<T, foldhash::fast::RandomState>;
/// The core's set: a hash set on the node, a [`VecSet`] in WebAssembly.
#[cfg(target_arch = "wasm32")]
pub(crate) type Set<T> = VecSet<T>;

/// An iterator over a [`Set`].
pub(crate) type SetIter<'a, T> = <&'a Set<T> as IntoIterator>::IntoIter;

/// A map kept as a list of entries, each key at most once, in no promised order.
#[derive(Debug, Clone)]
pub(crate) struct VecMap<K, V> {
    entries: Vec<(K, V)>,
}

impl<K, V> Default for VecMap<K, V> {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
        }
    }
}

impl<K: Eq, V> VecMap<K, V> {
    fn position<Q>(&self, key: &Q) -> Option<usize>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        self.entries.iter().position(|(k, _)| k.borrow() == key)
    }

    /// The number of entries.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether `key` has an entry.
    pub(crate) fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        self.position(key).is_some()
    }

    /// The value of `key`.
    pub(crate) fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        let index = self.position(key)?;
        Some(&self.entries[index].1)
    }

    /// The value of `key`, to change.
    pub(crate) fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        let index = self.position(key)?;
        Some(&mut self.entries[index].1)
    }

    /// Sets `key` to `value`; the value it had.
    pub(crate) fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self.position(&key) {
            Some(index) => Some(std::mem::replace(&mut self.entries[index].1, value)),
            None => {
                self.entries.push((key, value));
                None
            }
        }
    }

    /// Removes `key`; the value it had.
    pub(crate) fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        let index = self.position(key)?;
        Some(self.entries.swap_remove(index).1)
    }

    /// The keys.
    pub(crate) fn keys(&self) -> impl ExactSizeIterator<Item = &K> + '_ {
        self.entries.iter().map(|(key, _)| key)
    }

    /// The values.
    pub(crate) fn values(&self) -> impl Iterator<Item = &V> + '_ {
        self.entries.iter().map(|(_, value)| value)
    }

    /// The entries.
    pub(crate) fn iter(&self) -> impl ExactSizeIterator<Item = (&K, &V)> + '_ {
        self.entries.iter().map(|(key, value)| (key, value))
    }
}

/// Equal when they hold the same entries, in any order (as hash maps compare).
impl<K: Eq, V: PartialEq> PartialEq for VecMap<K, V> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len()
            && self
                .iter()
                .all(|(key, value)| other.get(key) == Some(value))
    }
}

impl<K: Eq, V: Eq> Eq for VecMap<K, V> {}

/// A set kept as a list, each item at most once, in no promised order.
#[derive(Debug, Clone)]
pub(crate) struct VecSet<T> {
    items: Vec<T>,
}

impl<T> Default for VecSet<T> {
    fn default() -> Self {
        Self { items: Vec::new() }
    }
}

impl<T: Eq> VecSet<T> {
    /// The number of items.
    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether `item` is in the set.
    pub(crate) fn contains<Q>(&self, item: &Q) -> bool
    where
        T: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        self.items.iter().any(|held| held.borrow() == item)
    }

    /// Adds `item`; whether it was not there.
    pub(crate) fn insert(&mut self, item: T) -> bool {
        if self.contains(&item) {
            return false;
        }
        self.items.push(item);
        true
    }

    /// Removes `item`; whether it was there.
    pub(crate) fn remove<Q>(&mut self, item: &Q) -> bool
    where
        T: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        match self.items.iter().position(|held| held.borrow() == item) {
            Some(index) => {
                self.items.swap_remove(index);
                true
            }
            None => false,
        }
    }

    /// The items.
    pub(crate) fn iter(&self) -> std::slice::Iter<'_, T> {
        self.items.iter()
    }
}

impl<'a, T> IntoIterator for &'a VecSet<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;

    fn into_iter(self) -> Self::IntoIter {
        self.items.iter()
    }
}

impl<T> IntoIterator for VecSet<T> {
    type Item = T;
    type IntoIter = std::vec::IntoIter<T>;

    fn into_iter(self) -> Self::IntoIter {
        self.items.into_iter()
    }
}

impl<T: Eq> FromIterator<T> for VecSet<T> {
    fn from_iter<I: IntoIterator<Item = T>>(items: I) -> Self {
        let mut set = Self::default();
        for item in items {
            set.insert(item);
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u8, u8),
        Remove(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..8_u8, any::<u8>()).prop_map(|(k, v)| Op::Insert(k, v)),
            (0..8_u8).prop_map(Op::Remove),
        ]
    }

    proptest! {
        /// The lists answer what the standard library's ordered collections answer.
        #[test]
        fn the_lists_behave_as_a_map_and_a_set(ops in proptest::collection::vec(op(), 0..64)) {
            let (mut map, mut model) = (VecMap::default(), BTreeMap::new());
            let (mut set, mut set_model) = (VecSet::default(), BTreeSet::new());
            for op in ops {
                match op {
                    Op::Insert(k, v) => {
                        prop_assert_eq!(map.insert(k, v), model.insert(k, v));
                        prop_assert_eq!(set.insert(k), set_model.insert(k));
                    }
                    Op::Remove(k) => {
                        prop_assert_eq!(map.remove(&k), model.remove(&k));
                        prop_assert_eq!(set.remove(&k), set_model.remove(&k));
                    }
                }
                prop_assert_eq!(map.len(), model.len());
                for k in 0..8 {
                    prop_assert_eq!(map.get(&k), model.get(&k));
                    prop_assert_eq!(map.contains_key(&k), model.contains_key(&k));
                    prop_assert_eq!(set.contains(&k), set_model.contains(&k));
                }
                let mut entries: Vec<_> = map.iter().map(|(k, v)| (*k, *v)).collect();
                entries.sort_unstable();
                prop_assert_eq!(entries, model.iter().map(|(k, v)| (*k, *v)).collect::<Vec<_>>());
                let mut items: Vec<_> = set.iter().copied().collect();
                items.sort_unstable();
                prop_assert_eq!(items, set_model.iter().copied().collect::<Vec<_>>());
                prop_assert_eq!(map.keys().len(), model.len());
                prop_assert_eq!(map.values().count(), model.len());
            }
            let mut reversed = VecMap::default();
            for (k, v) in map.iter().collect::<Vec<_>>().into_iter().rev() {
                reversed.insert(*k, *v);
            }
            prop_assert_eq!(&reversed, &map);
            reversed.insert(9, 9);
            prop_assert_ne!(&reversed, &map);
            if let Some(value) = map.get_mut(&0) {
                *value = 7;
                prop_assert_eq!(map.get(&0), Some(&7));
            }
            let collected: VecSet<u8> = [1, 2, 1, 3].into_iter().collect();
            prop_assert_eq!(collected.len(), 3);
            prop_assert_eq!(collected.into_iter().count(), 3);
        }
    }
}
