"""The class-index convention: category ids -> contiguous labels -> names, stored and restored."""

from __future__ import annotations

import pytest

from rfdetr.classes import COCO_CATEGORIES, ClassTable


def test_dataset_categories_map_to_contiguous_labels_by_sorted_id():
    table = ClassTable.from_categories([{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}, {"id": 12, "name": "fox"}])
    assert table.names == ["cat", "dog", "fox"]
    assert [table.category_id_of(label) for label in range(3)] == [3, 7, 12]
    assert table.label_of_category(12) == 2
    assert table.num_rows == 4  # K classes + one spare row
    assert table.class_rows == [0, 1, 2]


def test_roboflow_supercategory_is_not_a_class():
    categories = [
        {"id": 0, "name": "shapes", "supercategory": "none"},
        {"id": 1, "name": "circle", "supercategory": "shapes"},
        {"id": 2, "name": "square", "supercategory": "shapes"},
    ]
    table = ClassTable.from_categories(categories)
    assert table.names == ["circle", "square"]
    assert table.label_of_category(1) == 0
    with pytest.raises(KeyError, match="category id 0"):
        table.label_of_category(0)


def test_a_lone_none_supercategory_class_is_kept():
    table = ClassTable.from_categories([{"id": 1, "name": "widget", "supercategory": "none"}])
    assert table.names == ["widget"]


def test_coco_table_keeps_coco_ids_as_labels():
    table = ClassTable.coco()
    assert table.num_rows == 91
    assert len(table.entries) == len(COCO_CATEGORIES) == 80
    assert table.name_of(1) == "person" and table.name_of(18) == "dog" and table.name_of(90) == "toothbrush"
    assert 12 not in table.class_rows and 0 not in table.class_rows


def test_subset_keeps_order_and_a_spare_row():
    new, rows = ClassTable.coco().subset(["dog", "person"])
    assert new.names == ["dog", "person"]
    assert [new.category_id_of(label) for label in (0, 1)] == [18, 1]
    assert rows == (18, 1, 83)  # the spare takes a spare row (83 is no COCO category)
    assert new.num_rows == 3


@pytest.mark.parametrize("names, message", [(["person", "unicorn"], "unknown class names"),
                                            (["dog", "dog"], "more than once")])
def test_bad_names_are_refused_with_the_valid_ones(names, message):
    with pytest.raises(ValueError, match=message) as error:
        ClassTable.coco().subset(names)
    if message == "unknown class names":
        assert "toothbrush" in str(error.value)


def test_round_trip_through_a_plain_dict():
    table = ClassTable.from_names(["a", "b"])
    assert ClassTable.from_dict(table.to_dict()) == table
    with pytest.raises(ValueError, match="malformed class table"):
        ClassTable.from_dict({"classes": [{"name": "x"}]})


def test_inconsistent_tables_are_refused():
    with pytest.raises(ValueError, match="duplicate"):
        ClassTable.from_categories([{"id": 1, "name": "a"}, {"id": 2, "name": "a"}])
    with pytest.raises(ValueError, match="duplicate category ids"):
        ClassTable.from_categories([{"id": 1, "name": "a"}, {"id": 1, "name": "b"}])
