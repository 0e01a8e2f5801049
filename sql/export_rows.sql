-- The exportable columns of one curated shard (`export_shard`, a view the exporter points at
-- each shard file in turn): the chosen caption's ITC, and every kept text, best ITM first.
-- The user's --where predicate is applied on top, so it may name any column here.
CREATE OR REPLACE TEMP VIEW export_rows AS
SELECT
    key,
    sample_id,
    url,
    web_text,
    caption,
    caption_source,
    caption_itm,
    list_filter(candidates, lambda x: x.text = caption AND x.source = caption_source)[1].itc
        AS caption_itc,
    list_transform(
        list_reverse_sort(
            list_transform(
                list_filter(candidates, lambda x: x.kept), lambda x: {'itm': x.itm, 'text': x.text}
            )
        ),
        lambda x: x.text
    ) AS captions,
    candidates,
    width,
    height,
    sha256,
    shard,
    image
FROM export_shard;
