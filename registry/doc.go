// Package registry keeps cloudlet artifacts in OCI registries (distribution, Harbor, Zot, cloud
// registries): an overlay is an artifact of its own type whose single blob is the overlay
// file, so that a synthesis reads it by range like any HTTP origin; a base is an artifact
// whose config is the base's manifest (so its digest is the base ID) and whose blobs are the
// base's files, each pinned by the digest the manifest records.
//
// Credentials come from flags or from the usual docker config file; plain HTTP is used only
// when asked for.
package registry
