//! `observer.Observer`: Hubble's flow API over the flow store.
