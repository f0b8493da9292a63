"""Adapters: one plugin module per upstream text-to-motion codebase."""
