"""Models: topologies and output heads built on the recurrent layers (import the submodules)."""
