//! Host-side bindings of `plugin-api/wit/gatewayd.wit`: world `protocol` (what every plugin
//! fits) and, apart, the optional `schema` export (world `schema-owner`).

wasmtime::component::bindgen!({
    world: "protocol",
    path: "../plugin-api/wit",
    imports: { "gatewayd:plugin/store": async, "gatewayd:plugin/files": async },
    exports: { default: async },
});

/// The `schema` export, which components built before it existed do not have: looked up by
/// [`schema_owner::SchemaOwnerIndices::new`] on a linked component, `Err` when it is missing.
pub mod schema_owner {
    wasmtime::component::bindgen!({
        world: "schema-owner",
        path: "../plugin-api/wit",
        exports: { default: async },
    });
}
