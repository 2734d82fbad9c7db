"""The console's screens: one module per screen, modals in their own modules, widgets beside."""
