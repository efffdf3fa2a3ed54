"""logitleak: what do your logits know?"""

__version__ = "0.1.0"
