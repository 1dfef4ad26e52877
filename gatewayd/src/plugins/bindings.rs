//! Host-side bindings of `plugin-api/wit/gatewayd.wit`: world `protocol` (what every plugin
//! fits) and, apart, the optional exports `schema` (world `schema-owner`) and `speech-handler`
//! (world `speech-listener`).

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

/// The optional `speech-handler` export (speech events of calls), which components built
/// before it existed do not have: looked up like `schema`.
pub mod speech_listener {
    wasmtime::component::bindgen!({
        world: "speech-listener",
        path: "../plugin-api/wit",
        exports: { default: async },
    });
}
