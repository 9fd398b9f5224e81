"""Planning: a sweep becomes typed cells with content keys, dependencies and resources."""
