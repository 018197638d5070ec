"""placeholder"""
class Cursor:
    pass
class CursorGroup:
    pass
