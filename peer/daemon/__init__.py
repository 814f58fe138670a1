"""`edgeshard-peer`: settings (`config`), the view-to-cluster step (`planview`), the pure
lifecycle (`lifecycle`), the node that carries it out (`node`), its status document
(`status`), link probing (`probing`) and the entry point (`main`). Nothing heavy is imported
here: `main` checks the arguments before torch loads."""
