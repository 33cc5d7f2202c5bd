"""The review queue staff work from: listing cases now, order cases later."""
