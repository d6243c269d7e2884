"""The block runner and the passes over decoder blocks: dense statistics, allocation plan, masking."""
