"""The warning category of fastrnn, so users can filter its warnings alone."""


class FastRNNWarning(UserWarning):
    """Something fastrnn accepted but changed or could not honour as asked."""
